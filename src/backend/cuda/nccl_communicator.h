// The GPU side of data parallelism (src/dist): the GPU of each rank and an NCCL communicator over the ranks,
// bootstrapped through the host communicator (dist::Communicator: rank 0 makes the NCCL id, a broadcast hands it
// to every rank). The step engine (engine_cuda.cpp) all-reduces its flat gradient array through it.
//
// This header needs no CUDA headers.
#pragma once
#include <cstdint>
#include <memory>

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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt::cuda
