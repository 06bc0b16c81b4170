#include "data/progress.h"

#include "core/progress.h"

#include <cmath>
#include <cstdio>
#include <iomanip>
#include <sstream>

namespace ttt::data {

std::string format_byte_size(uint64_t b) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(1);
  if (b >= (1ull << 30)) os << double(b) / double(1ull << 30) << " GiB";
  else if (b >= (1ull << 20)) os << double(b) / double(1ull << 20) << " MiB";
  else if (b >= (1ull << 10)) os << double(b) / double(1ull << 10) << " KiB";
  else os << b << " B";
  return os.str();
}


ProgressLine::ProgressLine(std::ostream* out, std::string what, uint64_t total_bytes, bool terminal, double interval_s)
    : out_(out), what_(std::move(what)), total_(total_bytes), terminal_(terminal), interval_s_(interval_s),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

std::string ProgressLine::format(uint64_t done, uint64_t total, double seconds) {
  const double fraction = total > 0 ? double(done) / double(total) : 1.0;
  const double rate = seconds > 0 ? double(done) / seconds : 0.0;
  const double eta = rate > 0 ? double(total - std::min(done, total)) / rate : -1.0;
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << 100.0 * fraction << "% (" << format_byte_size(done) << " of "
     << format_byte_size(total) << ", " << format_byte_size(uint64_t(rate)) << "/s, ETA "
     << (done >= total ? "0:00" : format_hms(eta)) << ")";
  return os.str();
}

void ProgressLine::draw(uint64_t done, bool last, std::string_view detail) {
  if (!out_) return;
  drawn_ = true;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  *out_ << (terminal_ ? "\r" : "") << what_ << ": " << format(done, total_, seconds);
  if (!detail.empty()) *out_ << ", " << detail;
  if (!terminal_ || last) *out_ << "\n";
  out_->flush();
}

void ProgressLine::update(uint64_t done_bytes, std::string_view detail) {
  done_ = done_bytes;
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_draw_).count() < interval_s_) return;
  last_draw_ = now;
  draw(done_bytes, false, detail);
}

void ProgressLine::finish(std::string_view detail) { draw(std::max(done_, total_), true, detail); }

}  // namespace ttt::data
