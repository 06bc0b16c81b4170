// ttt: the command-line front end of the ttt.cpp library.
#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <string>

#include "cli/commands.h"
#include "core/error.h"

using ttt::cli::Argv;

namespace {

struct Command {
  std::function<int(const Argv&)> run;
  const char* help;
};

const std::map<std::string, Command>& commands() {
  static const std::map<std::string, Command> table = {
      {"op lact", {ttt::cli::cmd_op_lact, "run the LaCT memory operator on tensors from a safetensors file"}},
      {"op tnt", {ttt::cli::cmd_op_tnt, "run the TNT memory branch on tensors from a safetensors file"}},
      {"bench op", {ttt::cli::cmd_bench_op, "time the LaCT operator forward and forward+backward; prints JSON"}},
      {"bench tnt", {ttt::cli::cmd_bench_tnt, "time the TNT branch (sharded vs sequential) and Titans; prints JSON"}},
      {"bench step", {ttt::cli::cmd_bench_step, "time one training step of a model preset (tokens/s, memory); prints JSON"}},
      {"bench", {ttt::cli::cmd_bench, "benchmarks (ttt bench --help)"}},
      {"prepare", {ttt::cli::cmd_prepare, "turn text files into train/validation token files"}},
      {"train", {ttt::cli::cmd_train, "train a model (no flags: the tiny preset on the default corpus)"}},
      {"eval", {ttt::cli::cmd_eval, "evaluate a checkpoint on validation data; prints JSON"}},
      {"generate", {ttt::cli::cmd_generate, "generate text from a checkpoint with a constant-memory recurrent state"}},
  };
  return table;
}

void print_usage() {
  std::fprintf(stderr, "ttt.cpp — test-time-training sequence models\n\nusage: ttt <command> [flags]   (ttt <command> --help)\n\ncommands:\n");
  for (auto& [name, c] : commands()) std::fprintf(stderr, "  %-14s %s\n", name.c_str(), c.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  // Commands are one word ("train") or two ("op lact"): try the two-word form first.
  std::string one = argv[1];
  std::string two = argc >= 3 ? one + " " + argv[2] : "";
  const auto& table = commands();
  const Command* cmd = nullptr;
  int consumed = 1;
  if (!two.empty() && table.count(two)) {
    cmd = &table.at(two);
    consumed = 2;
  } else if (table.count(one)) {
    cmd = &table.at(one);
  }
  if (!cmd) {
    std::fprintf(stderr, "ttt: unknown command '%s'\n\n", two.empty() || argv[2][0] == '-' ? one.c_str() : two.c_str());
    print_usage();
    return 2;
  }
  Argv rest(argv + 1 + consumed, argv + argc);
  try {
    return cmd->run(rest);
  } catch (const ttt::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
