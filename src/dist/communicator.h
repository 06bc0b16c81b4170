// The communicator seam of multi-process training: rank, world size, local rank and the collectives that data
// parallelism needs, on host buffers. One process per device; `world()` picks the backend from how
// the process was started:
//   - under `mpirun` (OpenMPI: OMPI_COMM_WORLD_SIZE, or PMI/PMIx variables of `srun --mpi=pmix`): MPI, when this
//     build found MPI (CMake's FindMPI; without it such a start is refused with a clear message);
//   - under a torchrun-style launcher without MPI (RANK, WORLD_SIZE > 1, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; or
//     srun without PMI: SLURM_PROCID, SLURM_NTASKS > 1, SLURM_LOCALID with MASTER_ADDR and MASTER_PORT exported):
//     TCP (communicator_tcp.cpp): every rank connects to rank 0 at MASTER_ADDR:MASTER_PORT, and collectives go
//     through rank 0 (a star: fine for CPU runs and for bootstrapping NCCL, not for bandwidth);
//   - otherwise: a single process (every collective is a copy).
// GPU traffic goes through NCCL, bootstrapped over this communicator (src/backend/cuda/nccl_communicator.*).
//
// Sums have a fixed order (the one copy of it is here): element e of a sum over ranks is the pairwise tree
// over rank index (ranks [lo, hi) = [lo, mid) + [mid, hi), mid = lo + (hi - lo) / 2, the left operand first),
// computed by the rank that owns e's segment and so bit-identical on every rank and in every run; MPI's or
// NCCL's own reduction order is never used for host sums.
//
// Groups: split(color) makes a communicator over the ranks of one colour (MPI_Comm_split), for context
// parallelism's groups. MPI splits its communicator (a real sub-communicator); the other backends emulate the group
// over their own collectives (every rank of the parent takes part in each group collective, and each keeps its
// group's part: the groups must then run their collectives in step, as context parallelism's groups do).
//
// Timeouts: every collective waits at most collective_timeout_s() (TTT_DIST_TIMEOUT, seconds, default 300) for
// the other ranks; past it the rank prints which collective timed out and ends the whole job (MPI_Abort; with
// TCP the rank exits, closing its connections, and a closed connection is an error at once on its peers): a dead
// or stuck rank never leaves the others hanging.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ttt::dist {

// Seconds a collective waits for the other ranks (TTT_DIST_TIMEOUT; a bad value is an error naming it).
double collective_timeout_s();

// Splits n elements into `parts` contiguous segments of sizes differing by at most one (the larger first).
std::vector<int64_t> even_counts(int64_t n, int parts);

// out[e] = the pairwise tree over `parts` (see the header comment) of parts[r][e], for e < n.
void tree_sum(const std::vector<const float*>& parts, float* out, int64_t n);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* backend() const = 0;  // "single", "mpi", "tcp"; a split's: "mpi group", "tcp group", ...
  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  // "rank 1 of 2 (mpi)", for messages.
  std::string describe() const;

  // Rank r receives in `out` (counts[r] elements) the fixed-order sum over ranks of segment r of `in`
  // (segments: counts in rank order, summing to in's length).
  void reduce_scatter_sum(const float* in, float* out, const std::vector<int64_t>& counts);
  // Every rank's `data` becomes the fixed-order sum over ranks (bit-identical on every rank).
  void all_reduce_sum(float* data, int64_t n);
  // Rank r contributes counts[r] elements; `out` receives all of them in rank order.
  void all_gather(const float* in, float* out, const std::vector<int64_t>& counts);
  void all_gather(const double* in, double* out, const std::vector<int64_t>& counts);
  // Rank `root` receives all contributions in rank order (others' `out` is not touched; may be null).
  void gather(const float* in, float* out, const std::vector<int64_t>& counts, int root);
  void broadcast(void* data, int64_t bytes, int root);
  void barrier();
  // The largest of the ranks' values (every rank gets it).
  int64_t max_over_ranks(int64_t value);
  // Ends every rank of the job after an error here (MPI_Abort; TCP and one process: exit).
  [[noreturn]] virtual void abort_job(int code);
  // A collective of every rank: the communicator of the ranks whose `color` equals this rank's, numbered in rank
  // order (see "Groups" above). The group's local rank is this rank's local rank.
  virtual std::unique_ptr<Communicator> split(int color);

 protected:
  Communicator(int rank, int size, int local_rank) : rank_(rank), size_(size), local_rank_(local_rank) {}
  // The backend's primitives on bytes, each bounded by the timeout. all_to_all: send_bytes[d] bytes of `send`
  // (segments in rank order) go to rank d; recv_bytes[s] bytes from rank s land in `recv` in rank order (the
  // segment sizes are the same on every rank: segment d is rank d's share).
  virtual void all_to_all_bytes(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                                const std::vector<int64_t>& recv_bytes, const char* what) = 0;
  // bytes[r]: rank r's contribution; out: all of them in rank order; root < 0: every rank receives.
  virtual void gather_bytes(const void* in, void* out, const std::vector<int64_t>& bytes, int root, const char* what) = 0;
  virtual void broadcast_bytes(void* data, int64_t bytes, int root) = 0;
  virtual void barrier_impl() = 0;

 private:
  friend class GroupCommunicator;  // the emulated group runs on its parent's primitives
  void gather_typed(const void* in, void* out, const std::vector<int64_t>& counts, size_t elem, int root, const char* what);
  int rank_ = 0, size_ = 1, local_rank_ = 0;
};

// The communicator of this process (see the header comment); built once, kept until exit.
Communicator& world();
// Whether this build has MPI.
bool mpi_built();

// Backends (communicator_*.cpp).
std::unique_ptr<Communicator> make_single_communicator();
std::unique_ptr<Communicator> make_mpi_communicator();  // refuses when the build has no MPI
std::unique_ptr<Communicator> make_tcp_communicator(int rank, int size, int local_rank, const std::string& master_addr,
                                                    int master_port);

// After an error on this rank (the CLI's main): in a job of several ranks, the prefix of its message ("rank 1 of 2
// (mpi): ") and the end of the whole job (Communicator::abort_job), so that the other ranks never wait for this
// one; in one process "" and a plain return of `code`.
std::string error_prefix();
int end_after_error(int code);

}  // namespace ttt::dist
