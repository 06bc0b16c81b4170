// The Titans memory cases shared by the memory's tests (CPU twin, GPU batched and persistent kernels, their CPU
// emulation): sizes, gates, the reset period, the Q-K projection and a forced segment length, with a name for
// failure messages and the engine's MemoryShape.
#pragma once
#include <cstdint>
#include <string>

#include "ttt/titans_fused.h"

namespace ttt::test {

struct TitansCase {
  int64_t B, T, d, dh, chunk, period;
  bool momentum, decay, residual, qk = false;
  int64_t segment = 0;  // 0: the engine's default segment length
  std::string name() const {
    return "B" + std::to_string(B) + "_T" + std::to_string(T) + "_d" + std::to_string(d) + "_dh" +
           std::to_string(dh) + "_C" + std::to_string(chunk) + "_S" + std::to_string(period) +
           (momentum ? "_mom" : "") + (decay ? "_decay" : "") + (residual ? "_res" : "") + (qk ? "_qk" : "") +
           (segment ? "_seg" + std::to_string(segment) : "");
  }
  titans::MemoryShape shape() const {
    titans::MemoryShape s;
    s.B = B;
    s.T = T;
    s.d = d;
    s.dh = dh;
    s.chunk = chunk;
    s.period = period;
    s.momentum = momentum;
    s.decay = decay;
    s.residual = residual;
    s.qk = qk;
    s.segment = segment;
    return s;
  }
};

}  // namespace ttt::test
