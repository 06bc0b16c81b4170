// A byte-counting progress line on a stream (stderr for `ttt prepare`; durations as core/progress.h's format_hms): fraction done, rate and ETA, redrawn in place ('\r') on a
// terminal and printed as separate lines otherwise, at most once per `interval_s` seconds, and once at the end.
#pragma once
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <algorithm>

namespace ttt::data {

class ProgressLine {
 public:
  // `what` names the work ("importing"); `total_bytes` is what update() counts towards (> 0); `out` may be null.
  ProgressLine(std::ostream* out, std::string what, uint64_t total_bytes, bool terminal, double interval_s = 1.0);
  // Draws when the interval has passed; `detail` ("4 documents, 1200 tokens") follows the numbers.
  void update(uint64_t done_bytes, std::string_view detail = {});
  void finish(std::string_view detail = {});  // draws the final state and ends the line
  bool drawn() const { return drawn_; }      // whether a line was drawn yet
  // "12.5% (1.2 GiB of 9.6 GiB, 310.0 MiB/s, ETA 0:28)"
  static std::string format(uint64_t done, uint64_t total, double seconds);

 private:
  void draw(uint64_t done, bool last, std::string_view detail);
  std::ostream* out_;
  std::string what_;
  uint64_t total_;
  bool terminal_;
  double interval_s_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  uint64_t done_ = 0;
  bool drawn_ = false;
};

// "1.5 GiB", "12.0 KiB", "17 B".
std::string format_byte_size(uint64_t bytes);

}  // namespace ttt::data
