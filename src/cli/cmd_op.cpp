#include "cli/commands.h"
#include "core/error.h"
namespace ttt::cli {
int cmd_op_lact(const Argv&) { TTT_FAIL("ttt op lact: not built yet"); }
int cmd_bench_op(const Argv&) { TTT_FAIL("ttt bench op: not built yet"); }
}
