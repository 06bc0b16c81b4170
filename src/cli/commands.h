// One function per CLI command; each takes the arguments after the command words.
#pragma once
#include <string>
#include <vector>

namespace ttt::cli {

using Argv = std::vector<std::string>;
int cmd_op_lact(const Argv& args);    // cmd_op.cpp
int cmd_op_tnt(const Argv& args);     // cmd_op_tnt.cpp
int cmd_bench_op(const Argv& args);   // cmd_bench.cpp
int cmd_bench_tnt(const Argv& args);  // cmd_bench.cpp
int cmd_bench_step(const Argv& args); // cmd_bench_step.cpp
int cmd_bench(const Argv& args);      // cmd_bench.cpp
int cmd_prepare(const Argv& args);    // cmd_prepare.cpp
int cmd_train(const Argv& args);      // cmd_train.cpp
int cmd_eval(const Argv& args);       // cmd_eval.cpp
int cmd_generate(const Argv& args);   // cmd_generate.cpp

}  // namespace ttt::cli
