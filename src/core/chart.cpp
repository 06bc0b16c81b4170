#include "core/chart.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"
#include "core/png.h"

namespace ttt::chart {

namespace {

// 5x7 glyphs, one byte per row (bit 4 = leftmost column).
struct Glyph {
  char c;
  std::array<uint8_t, 7> rows;
};
constexpr Glyph kFont[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'A', {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11}}, {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
    {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}}, {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
    {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}}, {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
    {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}}, {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
    {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}}, {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
    {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
    {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}}, {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}}, {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
    {' ', {0, 0, 0, 0, 0, 0, 0}},                      {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},
    {',', {0, 0, 0, 0, 0x0C, 0x04, 0x08}},             {'-', {0, 0, 0, 0x1F, 0, 0, 0}},
    {'+', {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0}},       {':', {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0}},
    {'/', {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}},       {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}}, {'_', {0, 0, 0, 0, 0, 0, 0x1F}},
    {'=', {0, 0, 0x1F, 0, 0x1F, 0, 0}},                {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
    {'[', {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E}}, {']', {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E}},
    {'<', {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}}, {'>', {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}},
    {'*', {0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0}},       {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04}},
};

const Glyph& glyph(char c) {
  if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  for (const Glyph& g : kFont)
    if (g.c == c) return g;
  for (const Glyph& g : kFont)
    if (g.c == '?') return g;
  return kFont[0];
}

constexpr int kScale = 2;                   // font pixels per glyph pixel
constexpr int kCharW = 6 * kScale;          // advance: 5 columns + 1 of space
constexpr int kCharH = 7 * kScale;
constexpr Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0}, kGrid{225, 225, 225};

class Canvas {
 public:
  Canvas(int64_t w, int64_t h) : w_(w), h_(h), rgb_(size_t(w * h * 3), 255) {}
  void set(int64_t x, int64_t y, Rgb c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    uint8_t* p = &rgb_[size_t((y * w_ + x) * 3)];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }
  void rect(int64_t x0, int64_t y0, int64_t x1, int64_t y1, Rgb c) {  // inclusive corners
    for (int64_t y = std::min(y0, y1); y <= std::max(y0, y1); ++y)
      for (int64_t x = std::min(x0, x1); x <= std::max(x0, x1); ++x) set(x, y, c);
  }
  // A line `thick` pixels wide (Bresenham, a thick x thick square per step).
  void line(int64_t x0, int64_t y0, int64_t x1, int64_t y1, Rgb c, int thick) {
    const int64_t dx = std::llabs(x1 - x0), dy = -std::llabs(y1 - y0);
    const int64_t sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int64_t err = dx + dy;
    for (;;) {
      rect(x0 - (thick - 1) / 2, y0 - (thick - 1) / 2, x0 + thick / 2, y0 + thick / 2, c);
      if (x0 == x1 && y0 == y1) break;
      const int64_t e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  void text(int64_t x, int64_t y, const std::string& s, Rgb c) {  // (x, y): top-left corner
    for (size_t i = 0; i < s.size(); ++i) {
      const Glyph& g = glyph(s[i]);
      for (int r = 0; r < 7; ++r)
        for (int col = 0; col < 5; ++col)
          if (g.rows[size_t(r)] & (0x10 >> col))
            rect(x + int64_t(i) * kCharW + col * kScale, y + r * kScale, x + int64_t(i) * kCharW + col * kScale + kScale - 1,
                 y + r * kScale + kScale - 1, c);
    }
  }
  std::vector<uint8_t> take() { return std::move(rgb_); }

 private:
  int64_t w_, h_;
  std::vector<uint8_t> rgb_;
};

int64_t text_width(const std::string& s) { return int64_t(s.size()) * kCharW; }

std::string tick_label(double v) {
  if (std::abs(v) < 1e-12) return "0";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

bool drawable(double x, double y, bool log_y) { return std::isfinite(x) && std::isfinite(y) && (!log_y || y > 0); }

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  TTT_CHECK(std::isfinite(lo) && std::isfinite(hi) && hi > lo && target >= 2,
            "nice_ticks: bad range [" << lo << ", " << hi << "] or count " << target);
  // Of the steps 1, 2, 5 x 10^k near (hi - lo) / target, the one whose tick count is closest to the target
  // (the larger step on a tie).
  const double mag = std::pow(10.0, std::floor(std::log10((hi - lo) / double(target))));
  const auto count = [&](double step) { return std::floor(hi / step + 1e-9) - std::ceil(lo / step - 1e-9) + 1; };
  double best = mag * 10;
  for (double m : {0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0}) {
    const double step = m * mag;
    if (std::abs(count(step) - target) < std::abs(count(best) - target) ||
        (std::abs(count(step) - target) == std::abs(count(best) - target) && step > best))
      best = step;
  }
  std::vector<double> out;
  for (double k = std::ceil(lo / best - 1e-9); k * best <= hi + best * 1e-9; k += 1) out.push_back(k * best);
  return out;
}

int64_t Frame::px(double x) const {
  return left + int64_t(std::lround((x - x_lo) / (x_hi - x_lo) * double(right - left)));
}
int64_t Frame::py(double y) const {
  const double v = log_y ? std::log10(y) : y;
  return bottom - int64_t(std::lround((v - y_lo) / (y_hi - y_lo) * double(bottom - top)));
}

Frame frame_of(const Chart& c) {
  TTT_CHECK(c.width >= 200 && c.height >= 150 && c.width <= 8192 && c.height <= 8192,
            "chart: size " << c.width << " x " << c.height << " (from 200 x 150 to 8192 x 8192 pixels)");
  double xl = INFINITY, xh = -INFINITY, yl = INFINITY, yh = -INFINITY;
  for (const Series& s : c.series) {
    TTT_CHECK(s.x.size() == s.y.size(), "chart: series '" << s.label << "' has " << s.x.size() << " x and "
                                                            << s.y.size() << " y values");
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!drawable(s.x[i], s.y[i], c.log_y)) continue;
      const double y = c.log_y ? std::log10(s.y[i]) : s.y[i];
      xl = std::min(xl, s.x[i]), xh = std::max(xh, s.x[i]);
      yl = std::min(yl, y), yh = std::max(yh, y);
    }
  }
  TTT_CHECK(xl <= xh, "chart: no series has a point to draw" << (c.log_y ? " (a log axis needs values > 0)" : ""));
  if (xh == xl) xl -= 0.5, xh += 0.5;
  if (yh == yl) yl -= 0.5, yh += 0.5;
  const double pad = 0.04 * (yh - yl);
  Frame f;
  f.x_lo = xl, f.x_hi = xh, f.y_lo = yl - pad, f.y_hi = yh + pad, f.log_y = c.log_y;
  f.left = 12 * kCharW, f.right = c.width - 3 * kCharW;
  f.top = 3 * kCharH, f.bottom = c.height - 4 * kCharH;
  return f;
}

Rgb series_color(size_t i) {
  static constexpr Rgb kPalette[] = {{31, 119, 180}, {214, 39, 40},  {44, 160, 44},  {255, 127, 14},
                                     {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {23, 190, 207}};
  return kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
}

std::vector<uint8_t> render_rgb(const Chart& c) {
  const Frame f = frame_of(c);
  Canvas cv(c.width, c.height);
  // Grid and tick labels.
  for (double t : nice_ticks(f.x_lo, f.x_hi, 7)) {
    const int64_t x = f.px(t);
    cv.line(x, f.top, x, f.bottom, kGrid, 1);
    const std::string s = tick_label(t);
    cv.text(x - text_width(s) / 2, f.bottom + kCharH / 2, s, kBlack);
  }
  for (double t : nice_ticks(f.y_lo, f.y_hi, 6)) {
    const double v = c.log_y ? std::pow(10.0, t) : t;
    const int64_t y = f.py(v);
    cv.line(f.left, y, f.right, y, kGrid, 1);
    const std::string s = tick_label(v);
    cv.text(f.left - text_width(s) - kCharW / 2, y - kCharH / 2, s, kBlack);
  }
  // Axes, title, labels.
  cv.line(f.left, f.bottom, f.right, f.bottom, kBlack, 1);
  cv.line(f.left, f.top, f.left, f.bottom, kBlack, 1);
  if (!c.title.empty()) cv.text((c.width - text_width(c.title)) / 2, kCharH / 2, c.title, kBlack);
  if (!c.x_label.empty())
    cv.text((f.left + f.right - text_width(c.x_label)) / 2, c.height - 2 * kCharH, c.x_label, kBlack);
  if (!c.y_label.empty())
    cv.text(kCharW / 2, f.top - kCharH - kCharH / 2, c.y_label + (c.log_y ? " (log)" : ""), kBlack);
  // Series: consecutive drawable points joined.
  for (size_t si = 0; si < c.series.size(); ++si) {
    const Series& s = c.series[si];
    bool have = false;
    int64_t lx = 0, ly = 0;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!drawable(s.x[i], s.y[i], c.log_y)) continue;
      const int64_t x = f.px(s.x[i]), y = f.py(s.y[i]);
      if (have) cv.line(lx, ly, x, y, series_color(si), 2);
      else cv.rect(x - 1, y - 1, x + 1, y + 1, series_color(si));  // a lone point still shows
      have = true, lx = x, ly = y;
    }
  }
  // Legend, top right inside the plot area.
  int64_t width = 0;
  for (const Series& s : c.series) width = std::max(width, text_width(s.label));
  const int64_t lx = f.right - width - 3 * kCharW;
  for (size_t si = 0; si < c.series.size(); ++si) {
    const int64_t y = f.top + kCharH / 2 + int64_t(si) * (kCharH + kCharH / 2);
    cv.rect(lx - kCharW / 2, y - kCharH / 4, f.right - kCharW / 2, y + kCharH + kCharH / 4, kWhite);
    cv.rect(lx, y + kCharH / 4, lx + kCharW, y + kCharH - kCharH / 4, series_color(si));
    cv.text(lx + 2 * kCharW, y, c.series[si].label, kBlack);
  }
  return cv.take();
}

std::string render_png(const Chart& c) { return encode_png_rgb(c.width, c.height, render_rgb(c)); }

}  // namespace ttt::chart
