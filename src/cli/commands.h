// One function per CLI command; each takes the arguments after the command words.
#pragma once
#include <string>
#include <vector>

#include "core/safetensors.h"

namespace ttt::cli {

using Argv = std::vector<std::string>;
int cmd_op_lact(const Argv& args);    // cmd_op.cpp
int cmd_op_tnt(const Argv& args);     // cmd_op_tnt.cpp
int cmd_bench_op(const Argv& args);   // cmd_bench.cpp
int cmd_bench_tnt(const Argv& args);  // cmd_bench.cpp
int cmd_bench_step(const Argv& args); // cmd_bench_step.cpp
int cmd_prepare(const Argv& args);    // cmd_prepare.cpp
int cmd_train(const Argv& args);      // cmd_train.cpp
int cmd_eval(const Argv& args);       // cmd_eval.cpp
int cmd_generate(const Argv& args);   // cmd_generate.cpp
int cmd_logits(const Argv& args);     // cmd_logits.cpp
int cmd_plot(const Argv& args);       // cmd_plot.cpp
int cmd_export(const Argv& args);     // cmd_export.cpp
int cmd_import(const Argv& args);     // cmd_import.cpp

// The operator commands (op lact, op tnt) refuse to write non-finite outputs: finite inputs so large that the
// arithmetic overflows must end in an error, not in a file of NaN/Inf and exit 0. Throws naming the tensors.
void require_finite_outputs(const std::string& command, const SafeTensors& inputs, const SafeTensors& outputs);

}  // namespace ttt::cli
