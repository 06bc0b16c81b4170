// Times of the fused passes at the model shapes (nothing asserted on them; their bits are checked by the other
// test_cuda_kernels_*.cpp files): each fused call against the passes it replaced in the GPU model, median of 5
// CUDA-event timings, with the bytes each moves at that time. Conventions: cuda_kernels_test_util.h.
#include <gtest/gtest.h>

#include "cuda_kernels_test_util.h"

#ifdef TTT_HAVE_CUDA
#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

using namespace ttt;
using namespace ttt::cuda_kernels_test;

namespace {

// The median of 5 CUDA-event timings of f, after one untimed call.
double median_ms(const std::function<void()>& f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) t.push_back(cuda::elapsed_ms(f));
  std::sort(t.begin(), t.end());
  return t[2];
}

// One fused call's line: its time and bandwidth beside the replaced passes' time.
void report(const char* shape, const char* what, double fused_ms, double fused_bytes, double old_ms) {
  std::printf("[fused %s] %-34s fused %7.3f ms (%5.2f TB/s of %6.3f GB)  replaced passes %7.3f ms  saved %7.3f ms\n",
              shape, what, fused_ms, fused_bytes / fused_ms * 1e-9, fused_bytes * 1e-9, old_ms, old_ms - fused_ms);
}

}  // namespace

// ---- the fused q/k preparation at a model's shape: times (nothing asserted on them) ------------------------------
// T rows of H memory heads of d channels (RoPE per memory head, positions 0..T-1, theta 1e6): each fused call against
// the passes it replaced in the GPU model, median of 5 CUDA-event timings, with its compulsory bytes (forward: x in,
// y out, 8 bytes per element; backward: x, d(y), dx in, dx, its bf16 copy, dz, dz x out, 26) at that time.
static void time_qk_prep_fused(const char* shape, int64_t T, int64_t H, int64_t d, uint64_t seed) {
  const int64_t D = H * d, TD = T * D;
  std::printf("[fused %s] q/k preparation: %lld rows, %lld heads of %lld, %s\n", shape, (long long)T, (long long)H,
              (long long)d,
              cuda::mk::qk_prep_fused_team_lanes(d, d) > 0
                  ? ("teams of " + std::to_string(cuda::mk::qk_prep_fused_team_lanes(d, d)) + " lanes").c_str()
                  : "row groups");
  cuda::DeviceBuffer qkv(size_t(T * 3 * D) * 4), dqkv(size_t(T * 3 * D) * 4), sc(size_t(D) * 4), of(size_t(D) * 4),
      yT(size_t(TD) * 4), yh(size_t(TD) * 4), nrm(size_t(T * H) * 4), dz(size_t(TD) * 4), dzx(size_t(TD) * 4),
      g16(size_t(T * 3 * D) * 2), posd(size_t(T) * 8);
  qkv.fill_random<float>(T * 3 * D, seed, 0, 1.0, true);
  dqkv.fill_random<float>(T * 3 * D, seed + 1, 0, 1.0, true);
  sc.fill_random<float>(D, seed + 2, 0.5, 1.5, false);
  of.fill_random<float>(D, seed + 3, 0, 0.3, true);
  yT.fill_random<float>(TD, seed + 4, 0, 1.0, true);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) pos[size_t(i)] = i;
  posd.upload(pos.data(), pos.size() * 8);
  const float* q = qkv.as<float>();
  const int64_t* p = posd.as<int64_t>();
  {  // q/k preparation forward: one fused pass against prep, RoPE in place, heads_to_batch.
    const double fused = median_ms([&] {
      cuda::mk::qk_prep_forward_fused(q, 3 * D, sc.as<float>(), of.as<float>(), p, 1e6, d, yT.as<float>(),
                                      nrm.as<float>(), 1, T, H, d, 1e-5);
    });
    const double old = median_ms([&] {
      qk_prep_unfused_forward(q, 3 * D, sc.as<float>(), of.as<float>(), p, 1e6, d, yh.as<float>(), yT.as<float>(),
                              nrm.as<float>(), 1, T, H, d, 1e-5);
    });
    report(shape, "q/k preparation forward", fused, 8.0 * TD, old);
  }
  {  // Its backward: one fused pass against batch_to_heads, RoPE's adjoint in place, the prep's adjoint.
    const double fused = median_ms([&] {
      cuda::mk::qk_prep_backward_fused(q, 3 * D, sc.as<float>(), of.as<float>(), nrm.as<float>(), p, 1e6, d,
                                       yT.as<float>(), dqkv.as<float>(), 3 * D, g16.as<bf16>(), dz.as<float>(),
                                       dzx.as<float>(), 1, T, H, d, 1e-5);
    });
    const double old = median_ms([&] {
      qk_prep_unfused_backward(q, 3 * D, sc.as<float>(), of.as<float>(), nrm.as<float>(), p, 1e6, d, yT.as<float>(),
                               yh.as<float>(), dqkv.as<float>(), 3 * D, dz.as<float>(), dzx.as<float>(), 1, T, H, d,
                               1e-5);
    });
    report(shape, "q/k preparation backward", fused, 26.0 * TD, old);
  }
}

// The 87M configs' memory branch (D 768, 12 memory heads of 64, RoPE per head; batch 4 x 8192 = 32768 rows).
TEST(CudaKernels, FusedQkPrepShape87mTimes) {
  REQUIRE_CUDA();
  time_qk_prep_fused("87M", 32768, 12, 64, fresh_seed());
}

// ---- issue 12's fused passes at the 760m shape: times (nothing asserted on them) --------------------------------
// T = 32768 rows, D = 1536, memory heads 4 x 384 (RoPE per memory head), F = 4608, V = 32000. Each fused call against
// the passes it replaced in the GPU model, median of 5 CUDA-event timings, with the bytes each moves at that time.
// Their bits are checked by the tests above; this one prints what one call costs.
TEST(CudaKernels, FusedPassesShape760mTimes) {
  REQUIRE_CUDA();
  const int64_t T = 32768, D = 1536, H = 4, d = 384, V = 32000, TD = T * D;
  const uint64_t seed = fresh_seed();
  time_qk_prep_fused("760m", T, H, d, seed);  // the q/k preparation forward and backward
  cuda::DeviceBuffer yh(size_t(TD) * 4), g16(size_t(T * 3 * D) * 2);
  yh.fill_random<float>(TD, seed + 13, 0, 1.0, true);
  {  // The branch sum in bf16: one pass against gate, axpy, conversion.
    cuda::DeviceBuffer gate(size_t(T * H) * 4), attn(size_t(TD) * 4), sum(size_t(TD) * 4), sum16(size_t(TD) * 2);
    gate.fill_random<float>(T * H, seed + 5, 0, 1.0, true);
    attn.fill_random<float>(TD, seed + 6, 0, 1.0, true);
    const double fused = median_ms([&] {
      cuda::mk::gate_heads_add_forward(yh.as<float>(), gate.as<float>(), attn.as<float>(), sum16.as<bf16>(), T, H, d);
    });
    const double old = median_ms([&] {
      cuda::mk::gate_heads_forward(yh.as<float>(), gate.as<float>(), sum.as<float>(), T, H, d);
      cuda::mk::axpy(sum.as<float>(), attn.as<float>(), 1.0f, TD);
      cuda::mk::to_bf16(sum.as<float>(), D, sum16.as<bf16>(), D, T, D);
    });
    report("760m", "branch sum (bf16)", fused, 10.0 * TD, old);
  }
  {  // The RMSNorm backward adding the residual with its bf16 copy, against norm, copy, axpy, conversion.
    cuda::DeviceBuffer x(size_t(TD) * 4), w(size_t(D) * 4), rinv(size_t(T) * 4), dy(size_t(TD) * 4),
        res(size_t(TD) * 4), dx(size_t(TD) * 4), tmp(size_t(TD) * 4), dw(size_t(D) * 4),
        work(cuda::rms_norm_backward_workspace(T, D));
    x.fill_random<float>(TD, seed + 7, 0, 1.0, true);
    w.fill_random<float>(D, seed + 8, 0.5, 1.5, false);
    dy.fill_random<float>(TD, seed + 9, 0, 1.0, true);
    res.fill_random<float>(TD, seed + 10, 0, 1.0, true);
    cuda::rms_norm_forward(x.as<float>(), w.as<float>(), yh.as<float>(), rinv.as<float>(), T, D, D, 1e-6);
    const double fused = median_ms([&] {
      cuda::rms_norm_backward_add(x.as<float>(), w.as<float>(), rinv.as<float>(), dy.as<float>(), res.as<float>(),
                                  dx.as<float>(), g16.as<bf16>(), dw.as<float>(), work.as<void>(), T, D, D);
    });
    const double old = median_ms([&] {
      cuda::rms_norm_backward(x.as<float>(), w.as<float>(), rinv.as<float>(), dy.as<float>(), tmp.as<float>(),
                              dw.as<float>(), work.as<void>(), T, D, D);
      cuda::mk::copy2d(res.as<float>(), D, dx.as<float>(), D, T, D);
      cuda::mk::axpy(dx.as<float>(), tmp.as<float>(), 1.0f, TD);
      cuda::mk::to_bf16(dx.as<float>(), g16.as<bf16>(), TD);
    });
    report("760m", "RMSNorm backward + residual + bf16", fused, 26.0 * TD, old);
  }
  {  // The LM head's gradient: the bf16 one in place, against the fp32 one and Blas's two conversions of it.
    const size_t TV = size_t(T * V);
    cuda::DeviceBuffer logits(TV * 4), lse(size_t(T) * 4), loss(4), valid(4), tgt(size_t(T) * 4), g16v(TV * 2);
    std::vector<int32_t> targets(static_cast<size_t>(T));
    Rng r(seed + 11);
    for (auto& y : targets) y = int32_t(r.below(uint64_t(V)));
    tgt.upload(targets.data(), targets.size() * 4);
    auto refill = [&] { logits.fill_random<float>(int64_t(TV), seed + 12, 0, 2.0, true); };
    refill();
    const double fwd = median_ms([&] {
      cuda::cross_entropy_forward(logits.as<float>(), tgt.as<int32_t>(), lse.as<float>(), nullptr, loss.as<float>(),
                                  valid.as<int32_t>(), T, V);
    });
    std::printf("[fused 760m] %-34s %7.3f ms (%5.2f TB/s for one read of %.3f GB)\n", "cross-entropy forward", fwd,
                4 * double(TV) / fwd * 1e-9, 4 * double(TV) * 1e-9);
    // Each timed call overwrites the logits: time one call per fresh fill, fill outside the timing.
    std::vector<double> tf, to;
    for (int i = 0; i < 3; ++i) {
      refill();
      tf.push_back(cuda::elapsed_ms([&] {
        cuda::cross_entropy_backward_bf16(logits.as<float>(), tgt.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                          nullptr, T, V);
      }));
      refill();
      to.push_back(cuda::elapsed_ms([&] {
        cuda::cross_entropy_backward(logits.as<float>(), tgt.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                     nullptr, logits.as<float>(), T, V);
        for (int k = 0; k < 2; ++k) cuda::mk::to_bf16(logits.as<float>(), g16v.as<bf16>(), int64_t(TV));
      }));
    }
    std::sort(tf.begin(), tf.end());
    std::sort(to.begin(), to.end());
    report("760m", "cross-entropy backward (bf16)", tf[1], 6.0 * double(TV), to[1]);
  }
  {  // AdamW over the embedding's 49M parameters (one of the step's launches), and the clipping's scale.
    const int64_t n = V * D;
    cuda::DeviceBuffer pp(size_t(n) * 4), gg(size_t(n) * 4), mm(size_t(n) * 4), vv(size_t(n) * 4);
    pp.fill_random<float>(n, seed + 13, 0, 1.0, true);
    gg.fill_random<float>(n, seed + 14, 0, 1.0, true);
    mm.fill_zero();
    vv.fill_zero();
    cuda::AdamWParams a;
    a.lr = 1e-4;
    a.beta1 = 0.9;
    a.beta2 = 0.95;
    a.eps = 1e-8;
    a.weight_decay = 0.1;
    a.step = 1;
    a.decay = true;
    const double adam = median_ms([&] {
      cuda::adamw_step(pp.as<float>(), gg.as<float>(), mm.as<float>(), vv.as<float>(), nullptr, n, a);
    });
    const double scale = median_ms([&] { cuda::mk::scale(gg.as<float>(), 0.999f, n); });
    std::printf("[fused 760m] %-34s %7.3f ms (%5.2f TB/s of %.3f GB); scale %.3f ms (%5.2f TB/s)\n",
                "AdamW, 49M parameters", adam, 28.0 * double(n) / adam * 1e-9, 28.0 * double(n) * 1e-9, scale,
                8.0 * double(n) / scale * 1e-9);
  }
}
// ---- the memory-bound passes of the 760m step at their shapes: times (nothing asserted on them) -----------------
// Each call's time, its compulsory bytes and what they would take at 4.5 TB/s (about what an H200 reaches); the
// branch sum and SwiGLU's forward also one float off 16-byte alignment, which takes their element-wise kernels.
TEST(CudaKernels, BandwidthPassesShape760mTimes) {
  REQUIRE_CUDA();
  const int64_t T = 32768, D = 1536, H = 4, d = 384, Ha = 24, hd = 64, F = 4096, TD = T * D;
  const uint64_t seed = fresh_seed();
  auto line = [](const char* what, double ms, double bytes) {
    std::printf("[bandwidth 760m] %-40s %7.3f ms (%5.2f TB/s of %6.3f GB; %7.3f ms at 4.5 TB/s)\n", what, ms,
                bytes / ms * 1e-9, bytes * 1e-9, bytes / 4.5e12 * 1e3);
  };
  cuda::DeviceBuffer qkv(size_t(3 * TD) * 4 + 16), a(size_t(TD) * 4 + 16), b(size_t(TD) * 4 + 16),
      o16(size_t(TD) * 2 + 16), o32(size_t(TD) * 4 + 16), w(size_t(D) * 4), rinv(size_t(T) * 4 * H), pos(size_t(T) * 8);
  qkv.fill_random<float>(3 * TD, seed + 1, 0, 1.0, true);
  a.fill_random<float>(TD + 4, seed + 2, 0, 1.0, true);
  b.fill_random<float>(TD + 4, seed + 3, 0, 1.0, true);
  w.fill_random<float>(D, seed + 4, 0.5, 1.5, false);
  std::vector<int64_t> positions(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) positions[size_t(i)] = i;
  pos.upload(positions.data(), positions.size() * 8);
  line("attention RoPE forward, q into bf16", median_ms([&] {
         cuda::rope_forward(qkv.as<float>(), 3 * D, o16.as<bf16>(), D, pos.as<int64_t>(), T, Ha, hd, 1e4);
       }), 6.0 * TD);
  line("attention RoPE backward, dq into dqkv", median_ms([&] {
         cuda::rope_backward(a.as<float>(), D, qkv.as<float>(), 3 * D, pos.as<int64_t>(), T, Ha, hd, 1e4);
       }), 8.0 * TD);
  line("RMSNorm forward, bf16 y and the copy", median_ms([&] {
         cuda::rms_norm_forward_copy(a.as<float>(), w.as<float>(), o16.as<bf16>(), rinv.as<float>(), b.as<float>(), T,
                                     D, 1e-6);
       }), 10.0 * TD);
  line("RMSNorm per head, operator layout", median_ms([&] {
         cuda::rms_norm_heads_forward_batch(a.as<float>(), w.as<float>(), o32.as<float>(), rinv.as<float>(), 1, T, D,
                                            H, 1e-6);
       }), 8.0 * TD);
  {
    cuda::DeviceBuffer res(size_t(TD) * 4), dx(size_t(TD) * 4);
    res.fill_random<float>(TD, seed + 8, 0, 1.0, true);
    cuda::rms_norm_forward(a.as<float>(), w.as<float>(), o32.as<float>(), rinv.as<float>(), T, D, D, 1e-6);
    line("RMSNorm backward dx, residual and bf16", median_ms([&] {
           cuda::rms_norm_backward_add(a.as<float>(), w.as<float>(), rinv.as<float>(), b.as<float>(), res.as<float>(),
                                       dx.as<float>(), o16.as<bf16>(), nullptr, nullptr, T, D, D);
         }), 18.0 * TD);
    cuda::rms_norm_heads_forward_batch(a.as<float>(), w.as<float>(), o32.as<float>(), rinv.as<float>(), 1, T, D, H,
                                       1e-6);
    line("RMSNorm backward dx per head, layout", median_ms([&] {
           cuda::rms_norm_heads_backward_batch(a.as<float>(), w.as<float>(), rinv.as<float>(), b.as<float>(),
                                               dx.as<float>(), nullptr, nullptr, 1, T, D, H);
         }), 12.0 * TD);
  }
  for (const int off : {0, 1}) {
    cuda::DeviceBuffer gate(size_t(T * H) * 4);
    gate.fill_random<float>(T * H, seed + 5, 0, 1.0, true);
    line(off ? "branch sum (bf16), element-wise kernel" : "branch sum (bf16)", median_ms([&] {
           cuda::mk::gate_heads_add_forward(a.as<float>() + off, gate.as<float>(), b.as<float>() + off,
                                            o16.as<bf16>() + off, T, H, d);
         }), 10.0 * TD);
  }
  {
    const int64_t n = T * F;
    cuda::DeviceBuffer ga(size_t(n) * 4 + 16), u(size_t(n) * 4 + 16), m16(size_t(n) * 2 + 16);
    ga.fill_random<float>(n, seed + 6, 0, 2.0, true);
    u.fill_random<float>(n, seed + 7, 0, 1.0, true);
    for (const int off : {0, 1})
      line(off ? "SwiGLU forward (bf16), element-wise kernel" : "SwiGLU forward (bf16)", median_ms([&] {
             cuda::mk::swiglu_forward(ga.as<float>() + off, u.as<float>() + off, m16.as<bf16>() + off, n - 4);
           }), 10.0 * double(n));
  }
}
#endif  // TTT_HAVE_CUDA
