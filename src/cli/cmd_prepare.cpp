#include "cli/commands.h"
#include "core/error.h"
namespace ttt::cli {
int cmd_prepare(const Argv&) { TTT_FAIL("ttt prepare: not implemented yet"); }
}  // namespace ttt::cli
