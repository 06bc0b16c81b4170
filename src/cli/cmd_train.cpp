#include "cli/commands.h"
#include "core/error.h"
namespace ttt::cli {
int cmd_train(const Argv&) { TTT_FAIL("ttt train: not implemented yet"); }
}  // namespace ttt::cli
