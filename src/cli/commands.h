// One function per CLI command; each takes the arguments after the command words.
#pragma once
#include <string>
#include <vector>

namespace ttt::cli {

using Argv = std::vector<std::string>;
int cmd_op_lact(const Argv& args);
int cmd_bench_op(const Argv& args);

}  // namespace ttt::cli
