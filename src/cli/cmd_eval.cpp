#include "cli/commands.h"
#include "core/error.h"
namespace ttt::cli {
int cmd_eval(const Argv&) { TTT_FAIL("ttt eval: not implemented yet"); }
}  // namespace ttt::cli
