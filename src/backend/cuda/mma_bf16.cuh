// The bf16 tensor-core product of one warp (mma.sync m16n8k16, bf16 operands, fp32 accumulation) and the packing
// of its operands: the one copy the bf16 kernels share (attention_bf16.cu, the persistent Titans kernels). The
// CPU emulation of block-level code (tests/block_emulation.h) defines its own twins of these two functions with
// the same fragment layout and rounding, so device code written against them also runs on the CPU.
//
// Fragment layout (PTX ISA, mma.m16n8k16 .bf16; lane = 4 g + t, g = lane / 4, t = lane % 4; a register holds
// two bf16, the lower column / row index in its low half):
//   A [16][16] row-major: a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B [16][8] (k x n):    b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C [16][8]:            c[0], c[1] = (g, 2t), (g, 2t+1); c[2], c[3] = (g+8, 2t), (g+8, 2t+1)
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace ttt::cuda {

// Two floats rounded to bf16 (nearest even), lo in the low half: one operand register.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// c += A B over the warp (every lane calls it, converged).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace ttt::cuda
