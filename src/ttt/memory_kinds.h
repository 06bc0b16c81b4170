// The kinds a fast-weight memory is built from (docs/ALGORITHMS.md §2-3): its family, inner loss and weight norm,
// with the names they have in configs and flags. One type each for every layer of the project: the model config,
// the tape engine (memory.h), the explicit operators (lact_fused.h) and the CUDA backend.
//
// Plain C++ (nvcc compiles it through lact_fused.h).
#pragma once
#include <iosfwd>
#include <string>

namespace ttt::engine {

enum class Family { SwiGLU, MLP, Linear };
enum class Loss { Dot, MSE };
enum class WeightNorm { None, Post, Pre };

// Text -> kind, for flags (each error lists the names allowed); kind -> its name.
Family parse_family(const std::string& s);
Loss parse_loss(const std::string& s);
WeightNorm parse_weight_norm(const std::string& s);
const char* family_name(Family f);
const char* loss_name(Loss l);
const char* weight_norm_name(WeightNorm w);

// Streams print the names (error messages, test output).
std::ostream& operator<<(std::ostream& os, Family f);
std::ostream& operator<<(std::ostream& os, Loss l);
std::ostream& operator<<(std::ostream& os, WeightNorm w);

}  // namespace ttt::engine
