// The CUDA backend's operators on named tensors: the same contracts as the CPU's engine::cpu_backend()
// (ttt/lact_op.h) and engine::tnt_cpu_backend() (ttt/tnt.h), on the current GPU. Commands reach them through
// backend::operator_backends("cuda") (backend/registry.h); tests call them directly.
//
// This header needs no CUDA headers (declarations only; include ttt/lact_op.h or ttt/tnt.h to call them).
#pragma once

namespace ttt::engine {

class OpBackend;
class TntBackend;

// The LaCT operator (cuda_backend.cpp: cuda/lact_cuda.h underneath; its CPU twin is ttt/lact_fused.h): F32 (fp32,
// tf32 or bf16 products) or F64 inputs.
OpBackend& cuda_backend();
// The TNT branch (tnt_cuda.cpp: titans::tnt_op run by cuda::TntRunner): F32 or F64 inputs.
TntBackend& tnt_cuda_backend();

}  // namespace ttt::engine
