// ttt plot: curves of metrics.jsonl fields (loss, val_loss, val_bpb, grad_norm, tokens_per_s, ...) of one or more
// runs against step, tokens or wall time, as a PNG line chart (core/chart.h), plus a one-line summary per run
// (points, first / last / minimum value) for tables in docs. A run is a run directory (its metrics.jsonl) or a
// .jsonl file of such lines.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/chart.h"
#include "core/error.h"
#include "core/file_io.h"

namespace ttt::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

std::string metrics_path(const std::string& run) {
  if (fs::is_directory(run)) return (fs::path(run) / "metrics.jsonl").string();
  return run;
}

// x and y of every line of `path` that has both fields (numbers); the fields seen, for the error message.
chart::Series read_series(const std::string& path, const std::string& x_field, const std::string& y_field,
                          std::set<std::string>& seen) {
  std::ifstream in(path);
  TTT_CHECK(in.good(), "ttt plot: cannot read '" << path << "' (a run directory with metrics.jsonl, or a .jsonl file)");
  chart::Series s;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      TTT_FAIL("ttt plot: " << path << ":" << n << " is not a JSON line (" << e.what() << ")");
    }
    TTT_CHECK(j.is_object(), "ttt plot: " << path << ":" << n << " is not a JSON object");
    for (auto it = j.begin(); it != j.end(); ++it)
      if (it.value().is_number()) seen.insert(it.key());
    if (!j.contains(x_field) || !j.contains(y_field) || !j[x_field].is_number() || !j[y_field].is_number()) continue;
    s.x.push_back(j[x_field].get<double>());
    s.y.push_back(j[y_field].get<double>());
  }
  return s;
}

}  // namespace

int cmd_plot(const Argv& argv) {
  Args a(argv, "plot");
  a.value("runs", "comma-separated run directories (their metrics.jsonl) or .jsonl files (required)")
      .value("out", "output PNG file (required)")
      .value("y", "metrics field on the y axis: loss, val_loss, val_bpb, grad_norm, lr, tokens_per_s, ...", "loss")
      .value("x", "field on the x axis: step, tokens or elapsed_s (wall seconds)", "step")
      .value("labels", "comma-separated legend labels, one per run (default: the run names)")
      .value("title", "chart title", "")
      .value("width", "image width in pixels", "960")
      .value("height", "image height in pixels", "600")
      .flag("log-y", "logarithmic y axis");
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  for (const char* f : {"runs", "out"}) TTT_CHECK(a.has(f), "ttt plot: --" << f << " is required\n" << a.usage());
  const std::vector<std::string> runs = split_commas(a.str("runs"));
  TTT_CHECK(!runs.empty(), "ttt plot: --runs is empty");
  std::vector<std::string> labels = a.has("labels") ? split_commas(a.str("labels")) : std::vector<std::string>{};
  TTT_CHECK(labels.empty() || labels.size() == runs.size(),
            "ttt plot: --labels has " << labels.size() << " names for " << runs.size() << " runs");
  const std::string xf = a.str("x"), yf = a.str("y");
  chart::Chart c;
  c.title = a.str("title");
  c.x_label = xf == "elapsed_s" ? "wall time (s)" : xf;
  c.y_label = yf;
  c.log_y = a.on("log-y");
  c.width = a.i64("width");
  c.height = a.i64("height");
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string path = metrics_path(runs[i]);
    std::set<std::string> seen;
    chart::Series s = read_series(path, xf, yf, seen);
    if (s.x.empty()) {
      std::string fields;
      for (const std::string& f : seen) fields += (fields.empty() ? "" : ", ") + f;
      TTT_FAIL("ttt plot: no line of '" << path << "' has both '" << xf << "' and '" << yf
                                        << "' (numeric fields there: " << (fields.empty() ? "none" : fields) << ")");
    }
    s.label = labels.empty() ? fs::path(runs[i]).filename().string() : labels[i];
    if (s.label.empty()) s.label = fs::path(runs[i]).parent_path().filename().string();
    double lo = INFINITY;
    for (double y : s.y) lo = std::min(lo, y);
    std::printf("%s: %zu points, %s %g -> %g at %s %g (minimum %g)\n", s.label.c_str(), s.x.size(), yf.c_str(),
                s.y.front(), s.y.back(), xf.c_str(), s.x.back(), lo);
    c.series.push_back(std::move(s));
  }
  write_file_atomic(a.str("out"), chart::render_png(c));
  std::printf("wrote %s (%lld x %lld)\n", a.str("out").c_str(), (long long)c.width, (long long)c.height);
  return 0;
}

}  // namespace ttt::cli
