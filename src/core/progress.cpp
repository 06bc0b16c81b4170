#include "core/progress.h"

#include <cmath>
#include <cstdio>
#include <ostream>

namespace ttt {

std::string format_hms(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long long t = (long long)std::llround(s);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", t / 3600, (t / 60) % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", t / 60, t % 60);
  return buf;
}

std::string format_count(double x) {
  char buf[32];
  if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", x / 1e6);
  else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", x / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

int64_t peak_resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long long kib = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %lld kB", &kib) == 1) break;
  std::fclose(f);
  return kib < 0 ? -1 : int64_t(kib) * 1024;
}

ProgressLine::ProgressLine(std::ostream& os, std::string what, std::string unit, double every_seconds)
    : os_(os), what_(std::move(what)), unit_(std::move(unit)), every_(every_seconds), start_(Clock::now()), last_(start_) {}

void ProgressLine::update(int64_t done, int64_t total) {
  const Clock::time_point now = Clock::now();
  if (std::chrono::duration<double>(now - last_).count() < every_) return;
  last_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? double(done) / elapsed : 0.0;
  const double eta = rate > 0 ? double(total - done) / rate : -1.0;
  char pct[16];
  std::snprintf(pct, sizeof pct, "%.1f", total > 0 ? 100.0 * double(done) / double(total) : 100.0);
  os_ << what_ << ": " << done << "/" << total << " " << unit_ << " (" << pct << "%) | " << format_count(rate) << " "
      << unit_ << "/s | " << format_hms(elapsed) << " elapsed | ETA " << format_hms(eta) << std::endl;
}

}  // namespace ttt
