// The CUDA kernels of the model's layers, one header (and one .cu) per concern; this header includes them all.
//
//   norm_kernels.h         RMSNorm (whole rows, per head), forward and backward
//   rope_kernels.h         rotary position embedding
//   loss_kernels.h         softmax cross-entropy
//   optimizer_kernels.h    AdamW
//   attention.h            sliding-window attention (fp32 and bf16 tensor-core tiles), single-query attention
//   memory_kernels.h       memory branch: q/k preparation, output gate, low-rank diagonal       (namespace mk)
//   layout_kernels.h       block copies, head/batch layouts, embedding, float <-> bf16           (namespace mk)
//   elementwise_kernels.h  fills, axpy, scaling, gradient mask, activations, SwiGLU              (namespace mk)
//   reduction_kernels.h    sum of squares (the gradient norm)                                    (namespace mk)
//
// The LaCT and Titans operators keep their kernels beside them (lact_kernels.cuh, titans_cuda.cu, tnt_cuda.cu).
// Naming and launch conventions of the kernel files: kernel_util.cuh. No header here needs CUDA headers.
#pragma once

#include "backend/cuda/attention.h"
#include "backend/cuda/device.h"  // stream_synchronize (was declared here)
#include "backend/cuda/elementwise_kernels.h"
#include "backend/cuda/layout_kernels.h"
#include "backend/cuda/loss_kernels.h"
#include "backend/cuda/memory_kernels.h"
#include "backend/cuda/norm_kernels.h"
#include "backend/cuda/optimizer_kernels.h"
#include "backend/cuda/reduction_kernels.h"
#include "backend/cuda/rope_kernels.h"
