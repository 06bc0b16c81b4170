// Runs CUDA block-level code on the CPU for tests: one std::thread per CUDA thread of a block, __syncthreads as a
// barrier of the block, warp_sum as an exchange among the 32 threads of a warp, dynamic shared memory as a host
// buffer (filled with NaN bytes, so a read of what nothing wrote shows), asynchronous copies (async_copy_element,
// async_wait_all) as copies deferred to the wait, the warp's bf16 tensor-core product (mma_bf16, pack_bf16 of
// src/backend/cuda/mma_bf16.cuh) as an exchange of the lanes' fragments, blocks one after another. Include it
// before a device-code header written for it (src/backend/cuda/titans_persistent_kernels.cuh), which then
// compiles with the host compiler. Only what those kernels use is provided.
#pragma once
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/dtype.h"  // float_to_bf16, bf16_to_float

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define TTT_DYNAMIC_SMEM(name) unsigned char* name = ::block_emulation::state->smem.data()

namespace block_emulation {
struct Dim {
  unsigned x = 0, y = 0, z = 0;
};
struct State {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<double> lanes;
  std::vector<uint32_t> fragments;  // mma_bf16: per thread a[0..3], b0, b1
  std::vector<unsigned char> smem;
};
inline State* state = nullptr;
}  // namespace block_emulation

inline thread_local block_emulation::Dim threadIdx;
inline block_emulation::Dim blockIdx, blockDim, gridDim;

inline void __syncthreads() { block_emulation::state->block->arrive_and_wait(); }

// cp.async: the copy is queued by the issuing thread and made at its async_wait_all (the latest moment the device
// may make it), so a read of the destination before the wait and the barrier sees the old contents and shows.
namespace block_emulation {
struct PendingCopy {
  void* dst;
  const void* src;
  size_t bytes;
};
inline thread_local std::vector<PendingCopy> pending_copies;
inline std::atomic<int> unwaited_copies{0};  // threads that ended with copies never waited for
}  // namespace block_emulation
template <class T>
inline void async_copy_element(T* dst, const T* src) {
  block_emulation::pending_copies.push_back({dst, src, sizeof(T)});
}
inline void async_wait_all() {
  for (const auto& p : block_emulation::pending_copies) std::memcpy(p.dst, p.src, p.bytes);
  block_emulation::pending_copies.clear();
}
// The sum over the calling thread's warp, returned to every lane (lanes added in order: a different rounding
// from the device's butterfly, well inside the tests' bounds).
inline double warp_sum(double v) {
  block_emulation::State& s = *block_emulation::state;
  const unsigned w = threadIdx.x / 32;
  s.lanes[threadIdx.x] = v;
  s.warps[w]->arrive_and_wait();
  double acc = 0;
  for (unsigned l = 0; l < 32; ++l) acc += s.lanes[w * 32 + l];
  s.warps[w]->arrive_and_wait();  // every lane has read before the next call writes
  return acc;
}

// The twins of mma_bf16.cuh: the same rounding (operands to bf16, nearest even) and fragment layout; the
// 16 products of an output, exact in float, summed in k order in float onto the accumulator (the tensor core's
// order and internal rounding of that sum are its own: differences of a few float ulps).
inline uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(ttt::float_to_bf16(lo).bits) | (uint32_t(ttt::float_to_bf16(hi).bits) << 16);
}
inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  block_emulation::State& s = *block_emulation::state;
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  uint32_t* mine = s.fragments.data() + size_t(threadIdx.x) * 6;
  for (int r = 0; r < 4; ++r) mine[r] = a[r];
  mine[4] = b0, mine[5] = b1;
  s.warps[w]->arrive_and_wait();
  const uint32_t* warp = s.fragments.data() + size_t(w) * 32 * 6;
  auto half = [](uint32_t reg, unsigned k) { return ttt::bf16_to_float(ttt::bf16{uint16_t(k & 1 ? reg >> 16 : reg)}); };
  auto A = [&](unsigned row, unsigned k) {  // the lane and register that hold A[row][k]
    return half(warp[size_t((row % 8) * 4 + (k % 8) / 2) * 6 + (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k);
  };
  auto B = [&](unsigned k, unsigned col) { return half(warp[size_t(col * 4 + (k % 8) / 2) * 6 + 4 + (k >= 8 ? 1 : 0)], k); };
  float out[4];
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = c[i];
    for (unsigned k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    out[i] = acc;
  }
  s.warps[w]->arrive_and_wait();  // every lane has read before the next call writes
  for (int i = 0; i < 4; ++i) c[i] = out[i];
}

namespace block_emulation {
// kernel(args) on `blocks` blocks of `threads` threads (a multiple of 32) with `smem_bytes` of dynamic shared
// memory.
template <class Kernel, class Args>
void launch(Kernel kernel, unsigned blocks, unsigned threads, size_t smem_bytes, const Args& args) {
  blockDim.x = threads;
  gridDim.x = blocks;
  for (unsigned b = 0; b < blocks; ++b) {
    State s;
    s.block = std::make_unique<std::barrier<>>(threads);
    for (unsigned w = 0; w < threads / 32; ++w) s.warps.push_back(std::make_unique<std::barrier<>>(32));
    s.lanes.assign(threads, 0.0);
    s.fragments.assign(size_t(threads) * 6, 0u);
    s.smem.assign(smem_bytes, 0xFF);
    state = &s;
    blockIdx.x = b;
    std::vector<std::thread> team;
    for (unsigned t = 0; t < threads; ++t)
      team.emplace_back([&, t] {
        threadIdx.x = t;
        kernel(args);
        if (!pending_copies.empty()) {
          ++unwaited_copies;
          pending_copies.clear();
        }
      });
    for (auto& th : team) th.join();
    state = nullptr;
  }
}
}  // namespace block_emulation
