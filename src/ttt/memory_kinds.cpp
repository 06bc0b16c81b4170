#include "ttt/memory_kinds.h"

#include <ostream>

#include "core/error.h"

namespace ttt::engine {

Family parse_family(const std::string& s) {
  if (s == "swiglu") return Family::SwiGLU;
  if (s == "mlp") return Family::MLP;
  if (s == "linear") return Family::Linear;
  TTT_FAIL("unknown memory family '" << s << "' (expected swiglu, mlp or linear)");
}
Loss parse_loss(const std::string& s) {
  if (s == "dot") return Loss::Dot;
  if (s == "mse") return Loss::MSE;
  TTT_FAIL("unknown inner loss '" << s << "' (expected dot or mse)");
}
WeightNorm parse_weight_norm(const std::string& s) {
  if (s == "post") return WeightNorm::Post;
  if (s == "pre") return WeightNorm::Pre;
  if (s == "none") return WeightNorm::None;
  TTT_FAIL("unknown weight norm '" << s << "' (expected post, pre or none)");
}
const char* family_name(Family f) { return f == Family::SwiGLU ? "swiglu" : f == Family::MLP ? "mlp" : "linear"; }
const char* loss_name(Loss l) { return l == Loss::Dot ? "dot" : "mse"; }
const char* weight_norm_name(WeightNorm w) {
  return w == WeightNorm::Post ? "post" : w == WeightNorm::Pre ? "pre" : "none";
}

std::ostream& operator<<(std::ostream& os, Family f) { return os << family_name(f); }
std::ostream& operator<<(std::ostream& os, Loss l) { return os << loss_name(l); }
std::ostream& operator<<(std::ostream& os, WeightNorm w) { return os << weight_norm_name(w); }

}  // namespace ttt::engine
