#include "cli/commands.h"
#include "core/error.h"
namespace ttt::cli {
int cmd_bench_op(const Argv&) { TTT_FAIL("ttt bench op: not implemented yet"); }
int cmd_bench(const Argv&) { TTT_FAIL("ttt bench: not implemented yet"); }
}  // namespace ttt::cli
