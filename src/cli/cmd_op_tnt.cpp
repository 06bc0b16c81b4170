#include "cli/commands.h"
#include "core/error.h"
namespace ttt::cli {
int cmd_op_tnt(const Argv&) { TTT_FAIL("ttt op tnt: not implemented yet"); }
}  // namespace ttt::cli
