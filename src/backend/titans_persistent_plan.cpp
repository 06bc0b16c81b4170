// Planning of the persistent Titans kernels (see the header).
#include "backend/titans_persistent_plan.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "core/error.h"

namespace ttt::titans {

KernelChoice parse_kernel_choice(const std::string& text, const std::string& what) {
  if (text == "auto") return KernelChoice::Automatic;
  if (text == "persistent") return KernelChoice::Persistent;
  if (text == "batched") return KernelChoice::Batched;
  TTT_FAIL(what << ": '" << text << "' is not a Titans kernel (auto | persistent | batched)");
}

const char* kernel_choice_name(KernelChoice k) {
  switch (k) {
    case KernelChoice::Automatic: return "auto";
    case KernelChoice::Persistent: return "persistent";
    case KernelChoice::Batched: return "batched";
  }
  return "?";
}

KernelChoice kernel_choice_from_env() {
  const char* v = std::getenv("TTT_TITANS_KERNEL");
  if (!v || !*v) return KernelChoice::Automatic;
  return parse_kernel_choice(v, "TTT_TITANS_KERNEL");
}

PersistentVariant parse_persistent_variant(const std::string& text, const std::string& what) {
  if (text == "v1") return PersistentVariant::V1;
  if (text == "v2") return PersistentVariant::V2;
  TTT_FAIL(what << ": '" << text << "' is not a persistent kernel variant (v1 | v2)");
}

const char* persistent_variant_name(PersistentVariant v) { return v == PersistentVariant::V2 ? "v2" : "v1"; }

PersistentVariant persistent_variant_from_env() {
  const char* v = std::getenv("TTT_PERSISTENT_VARIANT");
  if (!v || !*v) return kDefaultPersistentVariant;
  return parse_persistent_variant(v, "TTT_PERSISTENT_VARIANT");
}

const char* persistent_buffer_name(int b) {
  static const char* names[kNumBuffers] = {"W",  "S",      "dW",     "dS",  "G",   "M",   "Z",   "Sg",
                                           "E",  "Bm",     "DS",     "A",   "DZ",  "dA",  "dSg", "dBm",
                                           "stage0", "stage1", "W'", "Zq", "Sgq", "dZq", "dE", "dDS",
                                           "dZ", "q~"};
  return b >= 0 && b < kNumBuffers ? names[b] : "?";
}

namespace {

int64_t longest_item(const MemoryShape& s) {
  int64_t len = 0;
  for (const Group& g : make_groups(s.B, s.T, s.period)) len = std::max(len, g.len);
  return len;
}

size_t round16(size_t n) { return (n + 15) / 16 * 16; }

}  // namespace

BlockLayout persistent_layout(const MemoryShape& s, size_t elem_bytes, size_t smem_limit, bool backward,
                              int threads, PersistentVariant variant) {
  const int64_t P2 = padded_state_elements(s), Cr = std::min(s.chunk, longest_item(s)), d = s.d, dh = s.dh;
  BlockLayout L;
  L.scalar_bytes = round16(sizeof(double) * size_t(2 * (threads / 32)) + elem_bytes * size_t(8 + 2 * Cr));
  // Placement order = priority (header comment).
  std::array<std::pair<int, int64_t>, kNumBuffers> order{};
  int n = 0;
  auto want = [&](int b, int64_t elements) { order[size_t(n++)] = {b, elements}; };
  want(kW, P2);
  if (variant == PersistentVariant::V2) {
    // v2 (header comment): the states, then the staging buffers (read by every phase), then the chunk buffers.
    if (backward) {
      want(kWnext, P2);
      want(kGradW, P2);
      want(s.momentum ? kGradS : kCot, P2);
      if (s.momentum) want(kS, P2);  // S_c: the recomputation's state, then each step's (copied in ahead)
    } else if (s.momentum) {
      want(kS, P2);
    }
    if (s.qk) want(kQk, d * d);
    const int64_t stage = stage_elements(Cr, d);
    want(kStage0, stage);
    want(kStage1, stage);
    if (s.qk && !backward) want(kQt, Cr * d);
    for (int b : {kZq, kSgq, kZ, kSg}) want(b, Cr * dh);
    want(kE, Cr * d);
    want(kBm, Cr * d);
    want(kA, Cr * dh);
    want(kDZ, Cr * dh);
    if (backward) {
      for (int b : {kGradA, kGradSg, kGradZq, kGradDS, kGradZ}) want(b, Cr * dh);
      want(kGradB, Cr * d);
      want(kGradE, Cr * d);
    }
  } else {
    if (backward) {
      want(kGradW, P2);
      want(s.momentum ? kGradS : kCot, P2);
    } else if (s.momentum) {
      want(kS, P2);
    }
    if (s.qk) want(kQk, d * d);
    want(kA, Cr * dh);
    want(kZ, Cr * dh);
    want(kSg, Cr * dh);
    want(kE, Cr * d);
    want(kBm, Cr * d);
    want(kDS, Cr * dh);
    want(kDZ, Cr * dh);
    if (backward) {
      want(kGradA, Cr * dh);
      want(kGradSg, Cr * dh);
      want(kGradB, Cr * d);
    }
  }
  const int v2_backward_states = 4 + (s.momentum ? 1 : 0);
  const int states = (backward ? (variant == PersistentVariant::V2 ? v2_backward_states : 3) : (s.momentum ? 2 : 1)) +
                     (s.qk ? 1 : 0);
  size_t shared = L.scalar_bytes;
  int64_t scratch = 0;
  bool spilled = false;
  L.state_on_chip = true;
  for (int i = 0; i < n; ++i) {
    auto [b, elements] = order[size_t(i)];
    BufferPlace& p = L.buf[size_t(b)];
    p.used = true;
    p.elements = elements;
    const size_t bytes = round16(size_t(elements) * elem_bytes);
    // Keep the order: once a buffer spills, the later (less used) ones spill too.
    if (!spilled && shared + bytes <= smem_limit) {
      p.shared = true;
      p.offset = int64_t(shared - L.scalar_bytes) / int64_t(elem_bytes);
      shared += bytes;
    } else {
      spilled = true;
      p.shared = false;
      p.offset = scratch;
      scratch += int64_t(round16(size_t(elements) * elem_bytes) / elem_bytes);
      if (i < states) L.state_on_chip = false;
    }
  }
  L.shared_bytes = shared;
  L.scratch_elements = scratch;
  L.all_on_chip = !spilled;
  return L;
}

double persistent_kept_state_bytes(const MemoryShape& s, size_t elem_bytes) {
  double bytes = 0;
  for (const Group& g : make_groups(s.B, s.T, s.period))
    bytes += double(g.items) * double(num_chunks(g.len, s.chunk)) * double(2 * s.P()) * (s.momentum ? 2.0 : 1.0) *
             double(elem_bytes);
  return bytes;
}

int64_t segment_from_env() {
  const char* v = std::getenv("TTT_TITANS_SEGMENT");
  if (!v || !*v) return 0;
  char* end = nullptr;
  errno = 0;
  const long long k = std::strtoll(v, &end, 10);
  TTT_CHECK(end && end != v && *end == '\0' && k >= 0 && errno == 0,
            "TTT_TITANS_SEGMENT must be a non-negative integer (0: automatic), got '" << v << "'");
  return int64_t(k);
}

int64_t persistent_segment(const MemoryShape& s, size_t elem_bytes) {
  const int64_t N = num_chunks(longest_item(s), s.chunk);
  if (s.segment > 0) return std::min(s.segment, N);
  if (const int64_t forced = segment_from_env(); forced > 0) return std::min(forced, N);
  if (persistent_kept_state_bytes(s, elem_bytes) <= s.persistent_state_budget_bytes) return 1;
  return std::max<int64_t>(1, int64_t(std::ceil(std::sqrt(double(N)))));
}

PersistentPlan plan_persistent(const MemoryShape& s, size_t elem_bytes, size_t smem_limit, KernelChoice choice,
                               PersistentVariant variant) {
  s.validate();
  TTT_CHECK(elem_bytes == 4 || elem_bytes == 8, "titans: persistent plan of " << elem_bytes << "-byte elements");
  PersistentPlan p;
  p.variant = variant;
  p.threads = persistent_threads(variant);
  p.chunk_rows = std::min(s.chunk, longest_item(s));
  p.segment = persistent_segment(s, elem_bytes);
  p.fwd = persistent_layout(s, elem_bytes, smem_limit, false, p.threads, variant);
  p.bwd = persistent_layout(s, elem_bytes, smem_limit, true, p.threads, variant);
  std::ostringstream why;
  if (choice == KernelChoice::Batched) {
    why << "batched (forced)";
  } else if (s.continues) {
    why << "batched: a chain that hands its state on (context parallelism's --cp-global state) runs the batched path";
  } else if (s.d > kPersistentMaxWidth || s.dh > kPersistentMaxWidth) {
    why << "batched: widths d " << s.d << ", dh " << s.dh << " exceed the persistent kernels' " << kPersistentMaxWidth;
  } else if (p.fwd.scalar_bytes > smem_limit) {
    why << "batched: " << p.fwd.scalar_bytes << " bytes of block scalars exceed " << smem_limit << " of shared memory";
  } else if (choice == KernelChoice::Persistent) {
    p.persistent = true;
    why << "persistent (forced)";
  } else if (s.chunk > kPersistentMaxAutoChunk) {
    why << "batched: chunks of " << s.chunk << " > " << kPersistentMaxAutoChunk
        << " tokens are enough work per step for the batched products";
  } else if (!p.fwd.all_on_chip || !p.bwd.state_on_chip) {
    why << "batched: the " << (p.fwd.all_on_chip ? "backward block's state" : "forward block")
        << " needs more than " << smem_limit << " bytes of shared memory";
  } else {
    p.persistent = true;
    why << "persistent";
  }
  if (p.persistent)
    why << " " << persistent_variant_name(variant) << " (shared memory " << p.fwd.shared_bytes << " / " << p.bwd.shared_bytes << " bytes forward / backward"
        << (p.fwd.all_on_chip && p.bwd.all_on_chip ? "" : ", some chunk buffers in global scratch")
        << (p.segment == 1 ? ", every state kept" : ", segments of " + std::to_string(p.segment) + " chunks") << ")";
  p.reason = why.str();
  return p;
}

void use_bf16_products(PersistentPlan& plan, size_t elem_bytes) {
  if (!plan.persistent) return;
  if (elem_bytes == 4 && plan.variant == PersistentVariant::V2) {
    plan.bf16_products = true;
    plan.reason += ", bf16 tensor-core products";
  } else {
    plan.reason += elem_bytes == 4 ? ", fp32 products (bf16 products need v2)" : ", float64 products";
  }
}

PersistentBuffers persistent_buffers(const MemoryShape& s, const PersistentPlan& plan, bool with_grad) {
  PersistentBuffers out;
  const int64_t P2 = 2 * s.P();
  for (const Group& g : make_groups(s.B, s.T, s.period)) {
    PersistentGroupBuffers b;
    b.g = g;
    const int64_t N = num_chunks(g.len, s.chunk);
    b.K = std::min(plan.segment, N);
    b.checkpoints = num_chunks(N, b.K);
    b.scratch_fwd = g.items * plan.fwd.scratch_elements;
    if (s.qk) {
      b.qk_z = g.items * N;
      if (with_grad) b.qk_dz = g.items * N;
    }
    if (with_grad) {
      b.ckW = g.items * b.checkpoints * P2;
      b.slotW = g.items * b.K * P2;
      if (s.momentum) {
        b.ckS = b.ckW;
        b.slotS = b.slotW;
      }
      b.dW = g.items * P2;
      b.scratch_bwd = g.items * plan.bwd.scratch_elements;
    }
    out.groups.push_back(b);
  }
  if (s.qk) {
    out.qt = s.B * s.T * s.d;
    if (with_grad) out.dqt = out.qt;
  }
  return out;
}

int64_t PersistentBuffers::elements() const {
  int64_t n = qt + dqt;
  for (const PersistentGroupBuffers& b : groups)
    for (int64_t e : {b.ckW, b.ckS, b.slotW, b.slotS, b.dW, b.scratch_fwd, b.scratch_bwd, b.qk_z, b.qk_dz}) n += e;
  return n;
}

size_t titans_runner_bytes(const MemoryShape& s, bool with_grad, size_t elem_bytes, const PersistentPlan& plan) {
  const int64_t dot_batch = with_grad ? max_dot_batch(s) : 1;
  const size_t fixed = sizeof(double) * size_t(dot_batch * kDotSlices) + kRunnerCublasWorkspace;
  const int64_t elements =
      plan.persistent ? persistent_buffers(s, plan, with_grad).elements() : memory_workspace_elements(s, with_grad);
  return fixed + elem_bytes * size_t(elements);
}

int64_t tnt_branch_buffers(const TntShape& s, bool with_grad) {
  if (s.num_memories() < 2) return 0;  // one memory writes the branch's outputs itself
  return with_grad ? 4 : 1;            // o, and the q, k, v gradients
}

size_t tnt_runner_bytes(const TntShape& s, bool with_grad, size_t elem_bytes, size_t smem_limit, KernelChoice choice) {
  s.validate();
  const KernelChoice chosen = choice == KernelChoice::Automatic ? kernel_choice_from_env() : choice;
  size_t bytes = 0;
  for (size_t m = 0; m < size_t(s.num_memories()); ++m) {
    const MemoryShape ms = s.memory(m);
    bytes += titans_runner_bytes(ms, with_grad, elem_bytes,
                                 plan_persistent(ms, elem_bytes, smem_limit, chosen, persistent_variant_from_env()));
    bytes += elem_bytes * size_t(tnt_branch_buffers(s, with_grad) * s.B * s.T * s.d);
  }
  return bytes;
}

}  // namespace ttt::titans
