// Line charts (core/chart.h) and `ttt plot`: tick choice, where points land, that each series is drawn in its
// colour where its data says and nowhere else it should not be, the PNG header, and the CLI's errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "cli_test_util.h"
#include "core/chart.h"
#include "core/error.h"
#include "temp_dir.h"

using namespace ttt;

namespace {

chart::Rgb pixel(const std::vector<uint8_t>& rgb, int64_t w, int64_t x, int64_t y) {
  const uint8_t* p = &rgb[size_t((y * w + x) * 3)];
  return {p[0], p[1], p[2]};
}

uint32_t be32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) | (uint32_t(uint8_t(s[at + 2])) << 8) |
         uint32_t(uint8_t(s[at + 3]));
}

}  // namespace

TEST(Chart, NiceTicksCoverTheRangeWithRoundSteps) {
  const auto t = chart::nice_ticks(0.0, 1.0, 6);
  ASSERT_EQ(t.size(), 6u);
  for (size_t i = 0; i < t.size(); ++i) EXPECT_NEAR(t[i], 0.2 * double(i), 1e-12);
  const auto u = chart::nice_ticks(3.3, 7.9, 5);  // step 1 or 2: round values inside the range
  ASSERT_GE(u.size(), 3u);
  for (double v : u) {
    EXPECT_GE(v, 3.3);
    EXPECT_LE(v, 7.9);
    EXPECT_NEAR(v, std::round(v), 1e-9);
  }
  const auto big = chart::nice_ticks(0, 32768, 7);
  EXPECT_NEAR(big[1] - big[0], 5000.0, 1e-9);
  EXPECT_THROW(chart::nice_ticks(1.0, 1.0, 5), Error);
}

TEST(Chart, SeriesAreDrawnWhereTheirDataIs) {
  chart::Chart c;
  c.title = "Two lines";
  c.x_label = "step";
  c.y_label = "loss";
  c.series.push_back({"low", {0, 5, 10}, {1, 1, 1}});
  c.series.push_back({"high", {0, 5, 10}, {3, 3, 3}});
  const chart::Frame f = chart::frame_of(c);
  EXPECT_EQ(f.px(0), f.left);
  EXPECT_EQ(f.px(10), f.right);
  EXPECT_GT(f.py(1), f.py(3));  // larger values higher up
  const auto rgb = chart::render_rgb(c);
  ASSERT_EQ(rgb.size(), size_t(c.width * c.height * 3));
  // On each line, a quarter of the way in (clear of the legend in the top right): the series' colour.
  const int64_t x = f.px(2.5);
  EXPECT_EQ(pixel(rgb, c.width, x, f.py(1)), chart::series_color(0));
  EXPECT_EQ(pixel(rgb, c.width, x, f.py(3)), chart::series_color(1));
  // Between the lines: neither colour. Outside the plot area's top-left corner: background.
  const auto mid = pixel(rgb, c.width, x, f.py(2));
  EXPECT_FALSE(mid == chart::series_color(0) || mid == chart::series_color(1));
  EXPECT_EQ(pixel(rgb, c.width, 1, 1), (chart::Rgb{255, 255, 255}));
  // The PNG: signature and the IHDR size.
  const std::string png = chart::render_png(c);
  ASSERT_GT(png.size(), 33u);
  EXPECT_EQ(std::memcmp(png.data(), "\x89PNG\r\n\x1a\n", 8), 0);
  EXPECT_EQ(be32(png, 16), uint32_t(c.width));
  EXPECT_EQ(be32(png, 20), uint32_t(c.height));
}

TEST(Chart, LogAxisAndBadCharts) {
  chart::Chart c;
  c.log_y = true;
  c.series.push_back({"decay", {1, 2, 3, 4}, {100, 10, 1, -1}});  // the negative point is skipped
  const chart::Frame f = chart::frame_of(c);
  EXPECT_NEAR(f.py(10), (f.py(100) + f.py(1)) / 2.0, 1.0);  // equal ratios, equal distances
  EXPECT_NO_THROW(chart::render_rgb(c));
  chart::Chart none;
  none.log_y = true;
  none.series.push_back({"negative", {1, 2}, {-1, -2}});
  EXPECT_THROW(chart::frame_of(none), Error);
  chart::Chart empty;
  EXPECT_THROW(chart::frame_of(empty), Error);
  chart::Chart ragged;
  ragged.series.push_back({"ragged", {1, 2}, {1}});
  EXPECT_THROW(chart::frame_of(ragged), Error);
  chart::Chart tiny;
  tiny.width = 10;
  tiny.series.push_back({"a", {1}, {1}});
  EXPECT_THROW(chart::frame_of(tiny), Error);
}

TEST(CliPlot, PlotsRunsAndSummarizes) {
  test::TempDir dir("plot");
  const std::string a = dir.path.string() + "/a", b = dir.path.string() + "/b.jsonl";
  std::filesystem::create_directories(a);
  {
    std::ofstream m(a + "/metrics.jsonl");
    for (int s = 1; s <= 20; ++s)
      m << "{\"step\":" << s << ",\"loss\":" << 5.0 / s << ",\"tokens\":" << s * 1000
        << (s % 10 == 0 ? ",\"val_loss\":" + std::to_string(4.0 / s) : std::string()) << "}\n";
    std::ofstream n(b);
    for (int s = 1; s <= 10; ++s) n << "{\"step\":" << s << ",\"loss\":" << 6.0 / s << ",\"tokens\":" << s * 2000 << "}\n";
  }
  const std::string out = dir.path.string() + "/curves.png";
  const test::RunResult r =
      test::run_cli("plot --runs " + a + "," + b + " --x tokens --labels bf16,fp32 --title \"loss\" --out " + out);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("bf16: 20 points, loss 5 -> 0.25 at tokens 20000"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("fp32: 10 points"), std::string::npos) << r.output;
  std::ifstream png(out, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(png)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 100u);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
  // val_loss: only the lines that have it (2 of 20).
  const test::RunResult v = test::run_cli("plot --runs " + a + " --y val_loss --out " + dir.path.string() + "/v.png");
  ASSERT_EQ(v.status, 0) << v.output;
  EXPECT_NE(v.output.find("2 points"), std::string::npos) << v.output;
}

TEST(CliPlot, BadInputsEndInClearErrors) {
  test::TempDir dir("plot_bad");
  const std::string a = dir.path.string() + "/a";
  std::filesystem::create_directories(a);
  { std::ofstream(a + "/metrics.jsonl") << "{\"step\":1,\"loss\":2}\n"; }
  const std::string out = " --out " + dir.path.string() + "/x.png";
  test::expect_clean_failure("plot --runs " + a, "--out is required");
  test::expect_clean_failure("plot --out x.png", "--runs is required");
  test::expect_clean_failure("plot --runs " + dir.path.string() + "/missing" + out, "cannot read");
  test::expect_clean_failure("plot --runs " + a + " --y val_bpb" + out, "numeric fields there: loss, step");
  test::expect_clean_failure("plot --runs " + a + " --labels one,two" + out, "2 names for 1 runs");
  test::expect_clean_failure("plot --runs " + a + " --width 5" + out, "size 5 x 600");
  { std::ofstream(dir.path.string() + "/broken.jsonl") << "{\"step\":1,\"loss\":2}\n{\"step\":2,\"loss\n"; }
  test::expect_clean_failure("plot --runs " + dir.path.string() + "/broken.jsonl" + out, "broken.jsonl:2 is not a JSON line");
}
