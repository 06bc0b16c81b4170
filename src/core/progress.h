// Progress lines of long runs ("12.3k tok/s | 0:54 elapsed | ETA 1:50"): the formats, and a reporter that prints
// at most one line every few seconds, so short runs stay quiet.
#pragma once
#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>

namespace ttt {

// Seconds as "m:ss" or "h:mm:ss"; "?" when not finite or negative.
std::string format_hms(double seconds);
// A count as "950", "12.3k", "4.56M".
std::string format_count(double x);

// This process's peak resident memory in bytes (VmHWM of /proc/self/status: its own high-water mark, not the
// parent's), or -1 where the system does not say.
int64_t peak_resident_bytes();

class ProgressLine {
 public:
  // Lines "<what>: <done>/<total> <unit> (<p>%) | <rate> <unit>/s | <elapsed> elapsed | ETA <eta>" on `os`.
  ProgressLine(std::ostream& os, std::string what, std::string unit, double every_seconds = 5.0);
  // Prints when every_seconds have passed since the start or the last line.
  void update(int64_t done, int64_t total);

 private:
  using Clock = std::chrono::steady_clock;
  std::ostream& os_;
  std::string what_, unit_;
  double every_;
  Clock::time_point start_, last_;
};

}  // namespace ttt
