// The GPU side of data parallelism (src/dist): the GPU of each rank and an NCCL communicator over the ranks,
// bootstrapped through the host communicator (dist::Communicator: rank 0 makes the NCCL id, a broadcast hands it
// to every rank). The step engine (engine_cuda.cpp) sums its flat gradient array through it: in buckets on a
// communication stream of its own while the backward runs (all_reduce_after_compute), or, with the sharded optimizer,
// reduce-scattered and all-gathered on the default stream.
//
// Order of the sums: NCCL's reduction order is fixed for a fixed rank count, topology and collective size, so a run is
// deterministic; with 2 ranks every element is one addition a + b, which is commutative in IEEE arithmetic, so any
// bucketing (and reduce-scatter) gives the bits of one all-reduce of the whole array. With more ranks NCCL may split
// and order a bucket's sums differently from a whole-array all-reduce: equal to rounding, not bit for bit.
//
// This header needs no CUDA headers.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace ttt::dist {
class Communicator;
}

namespace ttt::cuda {

// Makes device `local_rank` this process's GPU (GPUs are chosen by the rank on the node); a rank without a GPU of
// its own is an error naming its rank and the node's GPU count.
void select_device_of_rank(int local_rank, int rank);

class NcclGroup {
 public:
  // Collective over every rank of `host` (each on its own GPU, selected before).
  explicit NcclGroup(dist::Communicator& host);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
  // Sums `n` floats of device memory over the ranks, in place, on the default stream (where the model computes),
  // and waits for it at most dist::collective_timeout_s(); past that the NCCL communicator is aborted and the job
  // ends with a message. NCCL's order: deterministic for a fixed rank count and topology, not the host's tree.
  void all_reduce_sum(float* device_data, int64_t n);

  // Overlap with the backward. all_reduce_after_compute: sums n floats in place on the communication stream (a
  // non-blocking stream: the model's legacy default stream does not wait for it), ordered after everything the
  // default stream has been given so far (an event), and returns at once. finish_overlap (after the last bucket):
  // records when the default stream's work ends and when the communication stream's does, and makes the default
  // stream wait for the communication (what comes next, the mask and the clipping, reads the sums).
  // wait_overlap: waits (at most the timeout, as all_reduce_sum) for the communication stream, and returns the
  // milliseconds the communication ran past the end of the compute: the part of it the backward did not hide.
  void all_reduce_after_compute(float* device_data, int64_t n);
  void finish_overlap();
  double wait_overlap();

  // The sharded optimizer (ZeRO-1), on the default stream, waited for as all_reduce_sum. reduce_scatter_sum: `data`
  // holds size() * per_rank floats; afterwards rank r's segment [r * per_rank, (r + 1) * per_rank) holds the sum
  // over the ranks of that segment (the others are left as they were). all_gather: every rank's segment r of `data`
  // becomes rank r's segment (in place).
  void reduce_scatter_sum(float* device_data, int64_t per_rank);
  void all_gather(float* device_data, int64_t per_rank);

  // Context parallelism (model_cuda_context_parallel.cpp), on the default stream, each waited for as all_reduce_sum.
  // all_gather_from: every rank's `count` floats of `mine` land in `all` (size() * count floats) in rank order.
  // exchange: point-to-point transfers as one NCCL group (ncclSend / ncclRecv): every send must be met by the peer's
  // receive of the same count in the same call on the peer (an empty list, or a count of 0, is fine).
  struct Transfer {
    int peer = 0;
    float* data = nullptr;  // a send reads it, a receive writes it
    int64_t count = 0;
  };
  void all_gather_from(const float* mine, float* all, int64_t count, const char* what);
  void exchange(const std::vector<Transfer>& sends, const std::vector<Transfer>& receives, const char* what);
  // A send that does not hold the sender up (--cp-global state: the global memory's state to the next rank, which
  // wants it only after its own local memories): on the communication stream, ordered after everything the default
  // stream has been given so far (an event), returning at once; t.data must stay unchanged until wait_sends().
  // wait_sends: waits (at most the timeout, naming the send) for it. Every other operation of the group waits for
  // a send in flight first, so that the group runs one NCCL operation at a time.
  void send_async(const Transfer& t, const char* what);
  void wait_sends();
  int rank() const;
  int size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt::cuda
