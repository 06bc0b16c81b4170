#include "backend/cuda/nccl_communicator.h"

#include <cuda_runtime.h>
#ifdef TTT_HAVE_NCCL
#include <nccl.h>
#endif

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"

namespace ttt::cuda {

namespace {

void check_cuda(cudaError_t rc, const char* what) {
  TTT_CHECK(rc == cudaSuccess, "CUDA " << what << " failed: " << cudaGetErrorString(rc));
}

}  // namespace

void select_device_of_rank(int local_rank, int rank) {
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  TTT_CHECK(rc == cudaSuccess && count > 0, "rank " << rank << ": no CUDA device (" << cudaGetErrorString(rc) << ")");
  TTT_CHECK(local_rank < count, "rank " << rank << " is rank " << local_rank << " on its node, which has " << count
                                        << " GPU(s): start at most " << count << " ranks per node (one per GPU)");
  check_cuda(cudaSetDevice(local_rank), "cudaSetDevice");
}

#ifdef TTT_HAVE_NCCL

namespace {

void check_nccl(ncclResult_t rc, const char* what, const dist::Communicator& host) {
  TTT_CHECK(rc == ncclSuccess || rc == ncclInProgress,
            host.describe() << ": NCCL " << what << " failed: " << ncclGetErrorString(rc)
                            << " (NCCL_DEBUG=INFO says more)");
}

}  // namespace

struct NcclGroup::Impl {
  dist::Communicator* host = nullptr;
  ncclComm_t comm = nullptr;
  double timeout_s = 0;

  // Waits for the default stream (and the communicator's own progress) until the timeout.
  void wait(const char* what) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      // Non-blocking NCCL: the collective is enqueued once the communicator reports success, and done once the
      // stream has run it.
      ncclResult_t async = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm, &async), "error query", *host);
      check_nccl(async, what, *host);
      const cudaError_t q = async == ncclSuccess ? cudaStreamQuery(nullptr) : cudaErrorNotReady;
      if (q == cudaSuccess) return;
      TTT_CHECK(q == cudaErrorNotReady, host->describe() << ": CUDA error during the " << what << ": "
                                                        << cudaGetErrorString(q));
      if (Clock::now() > deadline) {
        std::fprintf(stderr,
                     "error: %s: the GPU %s waited %g s for the other ranks (TTT_DIST_TIMEOUT) and timed out: a rank "
                     "died, hangs or runs another step; ending every rank of the job\n",
                     host->describe().c_str(), what, timeout_s);
        std::fflush(stderr);
        ncclCommAbort(comm);
        comm = nullptr;
        dist::end_after_error(1);
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }
};

NcclGroup::NcclGroup(dist::Communicator& host) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.host = &host;
  m.timeout_s = dist::collective_timeout_s();
  ncclUniqueId id{};
  if (host.rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", host);
  host.broadcast(&id, sizeof id, 0);
  // Non-blocking initialization, so that a rank that never joins times out instead of hanging.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  check_nccl(ncclCommInitRankConfig(&m.comm, host.size(), id, host.rank(), &config), "ncclCommInitRankConfig", host);
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration<double>(m.timeout_s);
  for (;;) {
    ncclResult_t state = ncclInProgress;
    check_nccl(ncclCommGetAsyncError(m.comm, &state), "communicator setup", host);
    if (state == ncclSuccess) break;
    check_nccl(state, "communicator setup", host);
    TTT_CHECK(Clock::now() < deadline, host.describe() << ": the NCCL communicator was not set up within "
                                                       << m.timeout_s << " s (TTT_DIST_TIMEOUT): a rank is missing");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  host.barrier();
}

NcclGroup::~NcclGroup() {
  if (impl_ && impl_->comm) ncclCommDestroy(impl_->comm);
}

void NcclGroup::all_reduce_sum(float* device_data, int64_t n) {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  check_nccl(ncclAllReduce(device_data, device_data, size_t(n), ncclFloat, ncclSum, m.comm, nullptr), "all-reduce",
             *m.host);
  m.wait("all-reduce of gradients");
}

#else  // a toolkit without NCCL: the GPU engine trains in one process

struct NcclGroup::Impl {};

NcclGroup::NcclGroup(dist::Communicator& host) {
  TTT_FAIL(host.describe() << ": this build found no NCCL library with the CUDA toolkit, which the GPUs of several "
                           << "ranks need to sum their gradients; install NCCL (libnccl) and configure again, or run "
                           << "one process");
}
NcclGroup::~NcclGroup() = default;
void NcclGroup::all_reduce_sum(float*, int64_t) {}

#endif

}  // namespace ttt::cuda
