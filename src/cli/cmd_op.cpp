#include "cli/commands.h"
#include "core/error.h"
namespace ttt::cli {
int cmd_op_lact(const Argv&) { TTT_FAIL("ttt op lact: not implemented yet"); }
}  // namespace ttt::cli
