// Line charts as PNG images (`ttt plot`: loss curves against steps, tokens or wall time): axes with "nice"
// ticks and grid lines, one coloured polyline per series, a legend, a title and axis labels in a built-in 5x7
// pixel font (upper-case letters, digits and common punctuation; lower-case letters are drawn upper-case).
// No dependency beyond core/png.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ttt::chart {

struct Series {
  std::string label;
  std::vector<double> x, y;  // same length; points with a non-finite coordinate are skipped
};

struct Chart {
  std::string title, x_label, y_label;
  bool log_y = false;  // y on a log10 axis (non-positive values are skipped)
  int64_t width = 960, height = 600;
  std::vector<Series> series;
};

// Tick values covering [lo, hi]: multiples of 1, 2 or 5 times a power of ten, about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target);

// Where data coordinates land in the image (y already log10 on a log axis).
struct Frame {
  double x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  int64_t left = 0, right = 0, top = 0, bottom = 0;  // the plot area, pixels
  bool log_y = false;
  int64_t px(double x) const;
  int64_t py(double y) const;  // y in data units (log10 taken here on a log axis)
};

// The frame a chart is drawn in. Throws ttt::Error when no series has a drawable point or the size is too small.
Frame frame_of(const Chart& c);

// The image as 8-bit RGB rows (3 * width * height bytes, top row first), and as a PNG file's bytes.
std::vector<uint8_t> render_rgb(const Chart& c);
std::string render_png(const Chart& c);

// The colour of series i (also the legend's), as RGB.
struct Rgb {
  uint8_t r, g, b;
  bool operator==(const Rgb&) const = default;
};
Rgb series_color(size_t i);

}  // namespace ttt::chart
