#include "backend/cuda/nccl_communicator.h"

#include <cuda_runtime.h>
#ifdef TTT_HAVE_NCCL
#include <nccl.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
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
  // The overlap's communication stream (non-blocking: the legacy default stream where the model computes neither
  // waits for it nor makes it wait), an untimed event that orders a bucket after its producers, and the two timed
  // events that measure the communication left after the compute.
  cudaStream_t comm_stream = nullptr;
  cudaEvent_t ready = nullptr, compute_done = nullptr, comm_done = nullptr;
  const char* send_in_flight = nullptr;  // send_async's, until wait_sends

  using Clock = std::chrono::steady_clock;

  // Past the deadline: the message, the NCCL communicator aborted (its kernels stop spinning) and the job ended.
  [[noreturn]] void time_out(const char* what) {
    std::fprintf(stderr,
                 "error: %s: the GPU %s waited %g s for the other ranks (TTT_DIST_TIMEOUT) and timed out: a rank "
                 "died, hangs or runs another step; ending every rank of the job\n",
                 host->describe().c_str(), what, timeout_s);
    std::fflush(stderr);
    ncclCommAbort(comm);
    comm = nullptr;
    dist::end_after_error(1);
    std::exit(1);  // not reached: in a job of several ranks end_after_error ends it
  }

  // A non-blocking communicator may return ncclInProgress from a collective while it enqueues it in the
  // background: wait until that is done before the next NCCL call.
  void enqueued(ncclResult_t rc, const char* what) {
    check_nccl(rc, what, *host);
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    for (ncclResult_t state = rc; state == ncclInProgress;) {
      check_nccl(ncclCommGetAsyncError(comm, &state), "error query", *host);
      check_nccl(state, what, *host);
      if (state == ncclInProgress && Clock::now() > deadline) time_out(what);
      if (state == ncclInProgress) std::this_thread::yield();
    }
  }

  // Waits for `stream` (null: the default stream) and the communicator's own progress until the timeout.
  void wait(const char* what, cudaStream_t stream) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      // Non-blocking NCCL: the collective is enqueued once the communicator reports success, and done once the
      // stream has run it.
      ncclResult_t async = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm, &async), "error query", *host);
      check_nccl(async, what, *host);
      const cudaError_t q = async == ncclSuccess ? cudaStreamQuery(stream) : cudaErrorNotReady;
      if (q == cudaSuccess) return;
      TTT_CHECK(q == cudaErrorNotReady, host->describe() << ": CUDA error during the " << what << ": "
                                                        << cudaGetErrorString(q));
      if (Clock::now() > deadline) time_out(what);
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
  check_cuda(cudaStreamCreateWithFlags(&m.comm_stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  check_cuda(cudaEventCreateWithFlags(&m.ready, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  check_cuda(cudaEventCreate(&m.compute_done), "cudaEventCreate");
  check_cuda(cudaEventCreate(&m.comm_done), "cudaEventCreate");
  host.barrier();
}

NcclGroup::~NcclGroup() {
  if (!impl_) return;
  if (impl_->comm) ncclCommDestroy(impl_->comm);
  for (cudaEvent_t e : {impl_->ready, impl_->compute_done, impl_->comm_done})
    if (e) cudaEventDestroy(e);
  if (impl_->comm_stream) cudaStreamDestroy(impl_->comm_stream);
}

void NcclGroup::all_reduce_sum(float* device_data, int64_t n) {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  m.enqueued(ncclAllReduce(device_data, device_data, size_t(n), ncclFloat, ncclSum, m.comm, nullptr), "all-reduce");
  m.wait("all-reduce of gradients", nullptr);
}

void NcclGroup::all_reduce_after_compute(float* device_data, int64_t n) {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  check_cuda(cudaEventRecord(m.ready, nullptr), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(m.comm_stream, m.ready, 0), "cudaStreamWaitEvent");
  m.enqueued(ncclAllReduce(device_data, device_data, size_t(n), ncclFloat, ncclSum, m.comm, m.comm_stream),
             "all-reduce of a gradient bucket");
}

void NcclGroup::finish_overlap() {
  Impl& m = *impl_;
  check_cuda(cudaEventRecord(m.compute_done, nullptr), "cudaEventRecord");
  check_cuda(cudaEventRecord(m.comm_done, m.comm_stream), "cudaEventRecord");
}

double NcclGroup::wait_overlap() {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  m.wait("all-reduce of gradient buckets", m.comm_stream);
  // The compute never waits for another rank, so this wait cannot hang. What comes next on the default stream is
  // launched after the host saw the communication end, so it reads the sums.
  check_cuda(cudaEventSynchronize(m.compute_done), "cudaEventSynchronize");
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, m.compute_done, m.comm_done), "cudaEventElapsedTime");
  return std::max(0.0, double(ms));
}

void NcclGroup::reduce_scatter_sum(float* device_data, int64_t per_rank) {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  float* mine = device_data + int64_t(m.host->rank()) * per_rank;  // in place: NCCL's recvbuff = sendbuff + rank * count
  m.enqueued(ncclReduceScatter(device_data, mine, size_t(per_rank), ncclFloat, ncclSum, m.comm, nullptr),
             "reduce-scatter");
  m.wait("reduce-scatter of gradients", nullptr);
}

void NcclGroup::all_gather(float* device_data, int64_t per_rank) {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  const float* mine = device_data + int64_t(m.host->rank()) * per_rank;  // in place: sendbuff = recvbuff + rank * count
  m.enqueued(ncclAllGather(mine, device_data, size_t(per_rank), ncclFloat, m.comm, nullptr), "all-gather");
  m.wait("all-gather of weights", nullptr);
}

void NcclGroup::all_gather_from(const float* mine, float* all, int64_t count, const char* what) {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  wait_sends();
  m.enqueued(ncclAllGather(mine, all, size_t(count), ncclFloat, m.comm, nullptr), what);
  m.wait(what, nullptr);
}

void NcclGroup::send_async(const Transfer& t, const char* what) {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  wait_sends();
  TTT_CHECK(t.peer >= 0 && t.peer < m.host->size() && t.peer != m.host->rank() && t.count >= 0,
            m.host->describe() << ": NCCL " << what << ": a transfer with peer " << t.peer);
  if (t.count == 0) return;
  check_cuda(cudaEventRecord(m.ready, nullptr), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(m.comm_stream, m.ready, 0), "cudaStreamWaitEvent");
  m.enqueued(ncclSend(t.data, size_t(t.count), ncclFloat, t.peer, m.comm, m.comm_stream), what);
  m.send_in_flight = what;
}

void NcclGroup::wait_sends() {
  Impl& m = *impl_;
  if (!m.send_in_flight) return;
  const char* what = m.send_in_flight;
  m.send_in_flight = nullptr;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  m.wait(what, m.comm_stream);
}

void NcclGroup::exchange(const std::vector<Transfer>& sends, const std::vector<Transfer>& receives, const char* what) {
  Impl& m = *impl_;
  TTT_CHECK(m.comm, "NCCL communicator was aborted");
  wait_sends();
  if (sends.empty() && receives.empty()) return;
  for (const auto& list : {sends, receives})
    for (const Transfer& t : list)
      TTT_CHECK(t.peer >= 0 && t.peer < m.host->size() && t.peer != m.host->rank() && t.count >= 0,
                m.host->describe() << ": NCCL " << what << ": a transfer with peer " << t.peer);
  // One group: the sends and receives progress together, so two ranks sending to each other cannot deadlock.
  m.enqueued(ncclGroupStart(), what);
  for (const Transfer& t : sends)
    if (t.count > 0) m.enqueued(ncclSend(t.data, size_t(t.count), ncclFloat, t.peer, m.comm, nullptr), what);
  for (const Transfer& t : receives)
    if (t.count > 0) m.enqueued(ncclRecv(t.data, size_t(t.count), ncclFloat, t.peer, m.comm, nullptr), what);
  m.enqueued(ncclGroupEnd(), what);
  m.wait(what, nullptr);
}

int NcclGroup::rank() const { return impl_->host->rank(); }
int NcclGroup::size() const { return impl_->host->size(); }

#else  // a toolkit without NCCL: the GPU engine trains in one process

struct NcclGroup::Impl {};

NcclGroup::NcclGroup(dist::Communicator& host) {
  TTT_FAIL(host.describe() << ": this build found no NCCL library with the CUDA toolkit, which the GPUs of several "
                           << "ranks need to sum their gradients; install NCCL (libnccl) and configure again, or run "
                           << "one process");
}
NcclGroup::~NcclGroup() = default;
void NcclGroup::all_reduce_sum(float*, int64_t) {}
void NcclGroup::all_reduce_after_compute(float*, int64_t) {}
void NcclGroup::finish_overlap() {}
double NcclGroup::wait_overlap() { return 0; }
void NcclGroup::reduce_scatter_sum(float*, int64_t) {}
void NcclGroup::all_gather(float*, int64_t) {}
void NcclGroup::all_gather_from(const float*, float*, int64_t, const char*) {}
void NcclGroup::exchange(const std::vector<Transfer>&, const std::vector<Transfer>&, const char*) {}
void NcclGroup::send_async(const Transfer&, const char*) {}
void NcclGroup::wait_sends() {}
int NcclGroup::rank() const { return 0; }
int NcclGroup::size() const { return 1; }

#endif

}  // namespace ttt::cuda
