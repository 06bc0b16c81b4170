// The communicator's backend-neutral half: the fixed-order sums, the typed collectives over the backends' byte
// primitives, the single-process backend and the choice of backend from the environment. The MPI backend is
// communicator_mpi.cpp (compiled only when CMake found MPI; this file holds the one #ifdef TTT_HAVE_MPI).
#include "dist/communicator.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/error.h"

namespace ttt::dist {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

// An integer environment variable, or `fallback` when unset; a malformed one is an error naming it.
int64_t env_int(const char* name, int64_t fallback) {
  const char* v = env(name);
  if (!v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  TTT_CHECK(errno == 0 && end && *end == '\0', "environment variable " << name << "='" << v << "' is not an integer");
  return x;
}

class SingleCommunicator final : public Communicator {
 public:
  SingleCommunicator() : Communicator(0, 1, 0) {}
  const char* backend() const override { return "single"; }

 protected:
  void all_to_all_bytes(const void* send, const std::vector<int64_t>& send_bytes, void* recv, const std::vector<int64_t>&,
                        const char*) override {
    if (send_bytes[0] > 0) std::memmove(recv, send, size_t(send_bytes[0]));
  }
  void gather_bytes(const void* in, void* out, const std::vector<int64_t>& bytes, int, const char*) override {
    if (bytes[0] > 0) std::memmove(out, in, size_t(bytes[0]));
  }
  void broadcast_bytes(void*, int64_t, int) override {}
  void barrier_impl() override {}
};

// The element tree of the header comment over parts [lo, hi).
float tree_at(const std::vector<const float*>& parts, int lo, int hi, int64_t e) {
  if (hi - lo == 1) return parts[size_t(lo)][e];
  const int mid = lo + (hi - lo) / 2;
  const float left = tree_at(parts, lo, mid, e);
  return left + tree_at(parts, mid, hi, e);
}

// The largest all-reduce piece: bounds the receive buffer and keeps MPI's int byte counts in range.
constexpr int64_t kAllReducePiece = int64_t(1) << 26;

}  // namespace

double collective_timeout_s() {
  const char* v = env("TTT_DIST_TIMEOUT");
  if (!v) return 300.0;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  TTT_CHECK(end && *end == '\0' && std::isfinite(s) && s > 0,
            "TTT_DIST_TIMEOUT='" << v << "' must be a positive number of seconds (the longest a collective waits for "
                                 << "the other ranks)");
  return s;
}

std::vector<int64_t> even_counts(int64_t n, int parts) {
  TTT_CHECK(parts > 0 && n >= 0, "even_counts: " << n << " elements over " << parts << " parts");
  std::vector<int64_t> c(size_t(parts), n / parts);
  for (int64_t r = 0; r < n % parts; ++r) ++c[size_t(r)];
  return c;
}

void tree_sum(const std::vector<const float*>& parts, float* out, int64_t n) {
  TTT_CHECK(!parts.empty(), "tree_sum: no parts");
  const int p = int(parts.size());
  for (int64_t e = 0; e < n; ++e) out[e] = tree_at(parts, 0, p, e);
}

std::string Communicator::describe() const {
  std::ostringstream os;
  os << "rank " << rank_ << " of " << size_ << " (" << backend() << ")";
  return os.str();
}

void Communicator::reduce_scatter_sum(const float* in, float* out, const std::vector<int64_t>& counts) {
  TTT_CHECK(int(counts.size()) == size_, "reduce_scatter_sum: " << counts.size() << " counts for " << size_ << " ranks");
  const int64_t mine = counts[size_t(rank_)];
  if (size_ == 1) {
    if (mine > 0 && in != out) std::memmove(out, in, size_t(mine) * sizeof(float));
    return;
  }
  // Every rank's copy of my segment lands here (rank order), then the fixed tree sums them.
  std::vector<float> received(size_t(mine) * size_t(size_));
  std::vector<int64_t> send_bytes, recv_bytes(size_t(size_), mine * int64_t(sizeof(float)));
  for (int64_t c : counts) send_bytes.push_back(c * int64_t(sizeof(float)));
  all_to_all_bytes(in, send_bytes, received.data(), recv_bytes, "reduce-scatter of gradients");
  std::vector<const float*> parts;
  for (int r = 0; r < size_; ++r) parts.push_back(received.data() + size_t(r) * size_t(mine));
  tree_sum(parts, out, mine);
}

void Communicator::all_reduce_sum(float* data, int64_t n) {
  if (size_ == 1) return;
  for (int64_t at = 0; at < n; at += kAllReducePiece) {
    const int64_t len = std::min(kAllReducePiece, n - at);
    const std::vector<int64_t> counts = even_counts(len, size_);
    std::vector<float> mine(static_cast<size_t>(counts[size_t(rank_)]));
    reduce_scatter_sum(data + at, mine.data(), counts);
    all_gather(mine.data(), data + at, counts);
  }
}

void Communicator::gather_typed(const void* in, void* out, const std::vector<int64_t>& counts, size_t elem, int root,
                                const char* what) {
  TTT_CHECK(int(counts.size()) == size_, what << ": " << counts.size() << " counts for " << size_ << " ranks");
  std::vector<int64_t> bytes;
  for (int64_t c : counts) bytes.push_back(c * int64_t(elem));
  if (size_ == 1) {
    if (bytes[0] > 0 && in != out) std::memmove(out, in, size_t(bytes[0]));
    return;
  }
  gather_bytes(in, out, bytes, root, what);
}

void Communicator::all_gather(const float* in, float* out, const std::vector<int64_t>& counts) {
  gather_typed(in, out, counts, sizeof(float), -1, "all-gather");
}
void Communicator::all_gather(const double* in, double* out, const std::vector<int64_t>& counts) {
  gather_typed(in, out, counts, sizeof(double), -1, "all-gather");
}
void Communicator::gather(const float* in, float* out, const std::vector<int64_t>& counts, int root) {
  TTT_CHECK(root >= 0 && root < size_, "gather: root " << root << " is not a rank of " << size_);
  gather_typed(in, out, counts, sizeof(float), root, "gather");
}

void Communicator::broadcast(void* data, int64_t bytes, int root) {
  TTT_CHECK(root >= 0 && root < size_, "broadcast: root " << root << " is not a rank of " << size_);
  if (size_ > 1 && bytes > 0) broadcast_bytes(data, bytes, root);
}

void Communicator::barrier() {
  if (size_ > 1) barrier_impl();
}

int64_t Communicator::max_over_ranks(int64_t value) {
  if (size_ == 1) return value;
  std::vector<int64_t> all(static_cast<size_t>(size_));
  gather_bytes(&value, all.data(), std::vector<int64_t>(size_t(size_), int64_t(sizeof(int64_t))), -1, "all-gather");
  int64_t m = all[0];
  for (int64_t v : all) m = std::max(m, v);
  return m;
}

#ifdef TTT_HAVE_MPI
bool mpi_built() { return true; }
#else
bool mpi_built() { return false; }
std::unique_ptr<Communicator> make_mpi_communicator() {
  TTT_FAIL("this process was started by an MPI launcher (mpirun/srun), but this build of ttt has no MPI: install "
           "libopenmpi-dev (scripts/setup.sh does) and configure again, or start the ranks torchrun-style (RANK, "
           "WORLD_SIZE, MASTER_ADDR, MASTER_PORT)");
}
#endif

// A group emulated over its parent's collectives ("Groups" in communicator.h): each primitive is one all-gather of
// the parent (every parent rank contributes its bytes, sizes exchanged first), of which each rank keeps its group's.
class GroupCommunicator final : public Communicator {
 public:
  GroupCommunicator(Communicator& parent, std::vector<int> members, int rank)
      : Communicator(rank, int(members.size()), parent.local_rank()),
        parent_(parent),
        members_(std::move(members)),
        name_(std::string(parent.backend()) + " group") {}
  const char* backend() const override { return name_.c_str(); }
  [[noreturn]] void abort_job(int code) override {
    parent_.abort_job(code);
    std::exit(code);  // not reached
  }

 protected:
  void all_to_all_bytes(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                        const std::vector<int64_t>& recv_bytes, const char* what) override {
    // Every member's whole send buffer; segment d of each (the same sizes on every member) goes to member d.
    int64_t total = 0, before_me = 0;
    for (size_t d = 0; d < send_bytes.size(); ++d) {
      if (int(d) < rank()) before_me += send_bytes[d];
      total += send_bytes[d];
    }
    const std::vector<std::vector<char>> from = gather_members(send, total, what);
    char* out = static_cast<char*>(recv);
    for (int s = 0; s < size(); ++s) {
      const int64_t n = recv_bytes[size_t(s)];
      if (n > 0) std::memcpy(out, from[size_t(s)].data() + before_me, size_t(n));
      out += n;
    }
  }
  void gather_bytes(const void* in, void* out, const std::vector<int64_t>& bytes, int root, const char* what) override {
    const std::vector<std::vector<char>> from = gather_members(in, bytes[size_t(rank())], what);
    if (root >= 0 && root != rank()) return;
    char* o = static_cast<char*>(out);
    for (const auto& part : from) {
      if (!part.empty()) std::memcpy(o, part.data(), part.size());
      o += part.size();
    }
  }
  void broadcast_bytes(void* data, int64_t bytes, int root) override {
    const std::vector<std::vector<char>> from = gather_members(data, rank() == root ? bytes : 0, "broadcast");
    if (rank() != root && bytes > 0) std::memcpy(data, from[size_t(root)].data(), size_t(bytes));
  }
  void barrier_impl() override { parent_.barrier_impl(); }

 private:
  // Every parent rank's `bytes` of `in`; returns those of this group's members, in group order.
  std::vector<std::vector<char>> gather_members(const void* in, int64_t bytes, const char* what) {
    const int n = parent_.size();
    std::vector<int64_t> sizes(static_cast<size_t>(n));
    parent_.gather_bytes(&bytes, sizes.data(), std::vector<int64_t>(size_t(n), int64_t(sizeof(int64_t))), -1, what);
    int64_t total = 0;
    for (int64_t b : sizes) total += b;
    std::vector<char> all(static_cast<size_t>(total));
    parent_.gather_bytes(in, all.data(), sizes, -1, what);
    std::vector<std::vector<char>> mine;
    for (int m : members_) {
      int64_t at = 0;
      for (int r = 0; r < m; ++r) at += sizes[size_t(r)];
      mine.emplace_back(all.begin() + at, all.begin() + at + sizes[size_t(m)]);
    }
    return mine;
  }

  Communicator& parent_;
  std::vector<int> members_;  // parent ranks, in order
  std::string name_;          // "tcp group": a group's rank in messages is its rank in the group
};

std::unique_ptr<Communicator> Communicator::split(int color) {
  // Every rank's colour; the members of mine in rank order.
  std::vector<int64_t> colors(static_cast<size_t>(size_));
  const int64_t mine = color;
  gather_typed(&mine, colors.data(), std::vector<int64_t>(size_t(size_), 1), sizeof(int64_t), -1, "split");
  std::vector<int> members;
  int my_index = 0;
  for (int r = 0; r < size_; ++r)
    if (colors[size_t(r)] == color) {
      if (r == rank_) my_index = int(members.size());
      members.push_back(r);
    }
  return std::make_unique<GroupCommunicator>(*this, std::move(members), my_index);
}

void Communicator::abort_job(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::exit(code);  // with TCP: the connections close, and every peer ends with a message
}

namespace {

// The launch this process belongs to, from its environment (see communicator.h).
std::unique_ptr<Communicator> make_communicator_from_env() {
  // OpenMPI's mpirun, or a PMI/PMIx launcher (srun --mpi=pmix, hydra).
  const bool mpi_launch = env("OMPI_COMM_WORLD_SIZE") || env("PMIX_RANK") || env("PMI_RANK") || env("PMI_SIZE");
  if (mpi_launch) return make_mpi_communicator();
  // A torchrun-style launch (RANK, WORLD_SIZE), or srun's tasks without PMI (SLURM_PROCID, SLURM_NTASKS; an srun
  // step has SLURM_STEP_ID, a batch script does not): TCP through rank 0 at MASTER_ADDR:MASTER_PORT.
  const bool torchrun = env_int("WORLD_SIZE", 1) > 1;
  const bool srun = !torchrun && env("SLURM_STEP_ID") && env_int("SLURM_NTASKS", 1) > 1;
  if (!torchrun && !srun) return make_single_communicator();
  const char* size_var = torchrun ? "WORLD_SIZE" : "SLURM_NTASKS";
  const char* rank_var = torchrun ? "RANK" : "SLURM_PROCID";
  const char* local_var = torchrun ? "LOCAL_RANK" : "SLURM_LOCALID";
  const int64_t size = env_int(size_var, 1), rank = env_int(rank_var, -1);
  TTT_CHECK(rank >= 0 && rank < size, size_var << "=" << size << " but " << rank_var << "="
                                                << (env(rank_var) ? env(rank_var) : "unset")
                                                << ": every rank needs its number in [0, " << size << ")");
  const int64_t local_rank = env_int(local_var, rank);
  TTT_CHECK(local_rank >= 0 && local_rank < size, local_var << "=" << local_rank << " is not in [0, " << size << ")");
  const char* addr = env("MASTER_ADDR");
  const int64_t port = env_int("MASTER_PORT", -1);
  TTT_CHECK(addr && port > 0 && port < 65536,
            size_var << "=" << size << ": the ranks meet at rank 0's MASTER_ADDR and MASTER_PORT, but MASTER_ADDR="
                     << (addr ? addr : "unset") << " MASTER_PORT=" << (env("MASTER_PORT") ? env("MASTER_PORT") : "unset")
                     << " (export both; or start the ranks with mpirun)");
  return make_tcp_communicator(int(rank), int(size), int(local_rank), addr, int(port));
}

std::unique_ptr<Communicator>& world_slot() {
  static std::unique_ptr<Communicator> w;
  return w;
}

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

Communicator& world() {
  auto& w = world_slot();
  if (!w) w = make_communicator_from_env();
  return *w;
}

std::string error_prefix() {
  return world_slot() && world_slot()->size() > 1 ? world_slot()->describe() + ": " : std::string();
}

int end_after_error(int code) {
  if (!world_slot() || world_slot()->size() == 1) return code;
  world_slot()->abort_job(code);
  return code;  // not reached
}

}  // namespace ttt::dist
