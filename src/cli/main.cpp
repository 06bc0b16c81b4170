// ttt: the command-line front end of the ttt.cpp library.
#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/communicator.h"

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
      {"prepare", {ttt::cli::cmd_prepare, "turn text files into train/validation token files"}},
      {"train", {ttt::cli::cmd_train, "train a model (no flags: the tiny preset on the default corpus)"}},
      {"eval", {ttt::cli::cmd_eval, "evaluate a checkpoint on validation data; prints JSON"}},
      {"generate", {ttt::cli::cmd_generate, "generate text from a checkpoint with a constant-memory recurrent state"}},
      {"logits", {ttt::cli::cmd_logits, "the logits of a checkpoint over a text file, as a safetensors file"}},
      {"plot", {ttt::cli::cmd_plot, "plot metrics of runs (loss, val_loss, ...) against step, tokens or time as a PNG"}},
      {"export", {ttt::cli::cmd_export, "convert a checkpoint to the public LaCT model (--to lact-hf)"}},
      {"import", {ttt::cli::cmd_import, "convert a public LaCT model directory into a run (--from lact-hf DIR)"}},
  };
  return table;
}

void print_usage() {
  std::fprintf(stderr, "ttt.cpp — test-time-training sequence models\n\nusage: ttt <command> [flags]   (ttt <command> --help)\n\ncommands:\n");
  for (auto& [name, c] : commands()) std::fprintf(stderr, "  %-14s %s\n", name.c_str(), c.help);
}

// The two-word commands of a group ("bench" -> "bench op", "bench step", ...); empty if `group` is none.
std::vector<std::string> subcommands(const std::string& group) {
  std::vector<std::string> out;
  for (auto& [name, c] : commands())
    if (name.rfind(group + " ", 0) == 0) out.push_back(name);
  return out;
}

void print_group_usage(FILE* to, const std::string& group) {
  std::fprintf(to, "usage: ttt %s <subcommand> [flags]   (ttt %s <subcommand> --help)\n\nsubcommands:\n", group.c_str(),
               group.c_str());
  for (auto& name : subcommands(group)) std::fprintf(to, "  %-14s %s\n", name.c_str(), commands().at(name).help);
}

bool is_help(const std::string& a) { return a == "--help" || a == "-h" || a == "help"; }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || is_help(argv[1])) {
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
    // A group of two-word commands ("ttt bench", "ttt op --help"): list its subcommands.
    if (!subcommands(one).empty()) {
      if (argc >= 3 && is_help(argv[2])) {
        print_group_usage(stdout, one);
        return 0;
      }
      if (argc < 3) std::fprintf(stderr, "ttt %s: a subcommand is required\n\n", one.c_str());
      else std::fprintf(stderr, "ttt: unknown subcommand '%s'\n\n", two.c_str());
      print_group_usage(stderr, one);
      return 2;
    }
    std::fprintf(stderr, "ttt: unknown command '%s'\n\n", two.empty() || argv[2][0] == '-' ? one.c_str() : two.c_str());
    print_usage();
    return 2;
  }
  Argv rest(argv + 1 + consumed, argv + argc);
  try {
    return cmd->run(rest);
  } catch (const std::exception& e) {
    // In a job of several ranks (mpirun): the rank's name first, then the whole job ends (dist/communicator.h).
    std::fprintf(stderr, "error: %s%s\n", ttt::dist::error_prefix().c_str(), e.what());
    return ttt::dist::end_after_error(1);
  }
}
