#include "cli/commands.h"
#include "core/error.h"
namespace ttt::cli {
int cmd_generate(const Argv&) { TTT_FAIL("ttt generate: not implemented yet"); }
}  // namespace ttt::cli
