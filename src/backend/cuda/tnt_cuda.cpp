// engine::tnt_cuda_backend(): the TNT branch on named tensors (what `ttt op tnt --device cuda` runs), on the
// GPU through cuda/tnt_cuda.h. Same inputs, outputs and checks as the CPU backend (ttt/tnt.cpp).
#include "backend/cuda/tnt_cuda.h"

#include <string>

#include "backend/cuda/device.h"  // device_count
#include "ttt/tnt.h"

namespace ttt::engine {

namespace {

class CudaTntBackend final : public TntBackend {
 public:
  const char* name() const override { return "cuda"; }
  SafeTensors tnt(const SafeTensors& st, const TntOptions& opt) override {
    std::string why;
    TTT_CHECK(cuda::device_count(&why) > 0, "ttt op tnt --device cuda: no usable CUDA device (" << why << ")");
    return titans::tnt_op(st, opt, cuda::tnt_gpu_runner());
  }
};

}  // namespace

TntBackend& tnt_cuda_backend() {
  static CudaTntBackend backend;
  return backend;
}

}  // namespace ttt::engine
