// The MPI backend of the communicator (compiled only when CMake found MPI): non-blocking MPI collectives polled
// against the collective timeout, so that a dead or stuck rank ends the job with a message instead of a hang.
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"

namespace ttt::dist {

namespace {

// MPI counts are ints: the collective's byte counts in units of `unit` bytes (1, 4 or 8; the largest that divides
// every count) must fit one.
struct Units {
  MPI_Datatype type = MPI_BYTE;
  int64_t unit = 1;
};

class MpiCommunicator final : public Communicator {
 public:
  // comm: MPI_COMM_WORLD (this object finalizes MPI at the end), or a split of it (freed at the end; "mpi group" in
  // messages).
  MpiCommunicator(int rank, int size, int local_rank, MPI_Comm comm = MPI_COMM_WORLD)
      : Communicator(rank, size, local_rank), timeout_s_(collective_timeout_s()), comm_(comm) {
    MPI_Type_contiguous(4, MPI_BYTE, &word_);
    MPI_Type_commit(&word_);
    MPI_Type_contiguous(8, MPI_BYTE, &dword_);
    MPI_Type_commit(&dword_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    MPI_Type_free(&word_);
    MPI_Type_free(&dword_);
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
    else MPI_Finalize();
  }
  const char* backend() const override { return comm_ == MPI_COMM_WORLD ? "mpi" : "mpi group"; }
  [[noreturn]] void abort_job(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
  }
  // A real sub-communicator (MPI_Comm_split), its collectives independent of the other groups'.
  std::unique_ptr<Communicator> split(int color) override {
    MPI_Comm group;
    check(MPI_Comm_split(comm_, color, rank(), &group), "split");
    MPI_Comm_set_errhandler(group, MPI_ERRORS_RETURN);
    int rank = 0, size = 1;
    MPI_Comm_rank(group, &rank);
    MPI_Comm_size(group, &size);
    return std::make_unique<MpiCommunicator>(rank, size, local_rank(), group);
  }

 protected:
  void all_to_all_bytes(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                        const std::vector<int64_t>& recv_bytes, const char* what) override {
    std::vector<int64_t> all = send_bytes;
    all.insert(all.end(), recv_bytes.begin(), recv_bytes.end());
    const Units u = units(all, what);
    std::vector<int> sc, sd, rc, rd;
    displacements(send_bytes, u, what, sc, sd);
    displacements(recv_bytes, u, what, rc, rd);
    MPI_Request req;
    check(MPI_Ialltoallv(send, sc.data(), sd.data(), u.type, recv, rc.data(), rd.data(), u.type, comm_, &req), what);
    wait(req, what);
  }
  void gather_bytes(const void* in, void* out, const std::vector<int64_t>& bytes, int root, const char* what) override {
    const Units u = units(bytes, what);
    std::vector<int> counts, displs;
    displacements(bytes, u, what, counts, displs);
    MPI_Request req;
    if (root < 0)
      check(MPI_Iallgatherv(in, counts[size_t(rank())], u.type, out, counts.data(), displs.data(), u.type, comm_,
                            &req), what);
    else
      check(MPI_Igatherv(in, counts[size_t(rank())], u.type, out, counts.data(), displs.data(), u.type, root,
                         comm_, &req), what);
    wait(req, what);
  }
  void broadcast_bytes(void* data, int64_t bytes, int root) override {
    const Units u = units({bytes}, "broadcast");
    MPI_Request req;
    check(MPI_Ibcast(data, int(bytes / u.unit), u.type, root, comm_, &req), "broadcast");
    wait(req, "broadcast");
  }
  void barrier_impl() override {
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), "barrier");
    wait(req, "barrier");
  }

 private:
  Units units(const std::vector<int64_t>& bytes, const char* what) const {
    int64_t sum = 0;
    bool by4 = true, by8 = true;
    for (int64_t b : bytes) {
      sum += b;
      by4 = by4 && b % 4 == 0;
      by8 = by8 && b % 8 == 0;
    }
    Units u;
    if (by8) u = {dword_, 8};
    else if (by4) u = {word_, 4};
    TTT_CHECK(sum / u.unit < INT_MAX, describe() << ": " << what << " of " << sum << " bytes exceeds what one MPI call moves");
    return u;
  }
  void displacements(const std::vector<int64_t>& bytes, const Units& u, const char* what, std::vector<int>& counts,
                     std::vector<int>& displs) const {
    int64_t at = 0;
    for (int64_t b : bytes) {
      counts.push_back(int(b / u.unit));
      displs.push_back(int(at));
      at += b / u.unit;
    }
    (void)what;
  }
  void check(int rc, const char* what) const {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    TTT_FAIL(describe() << ": MPI " << what << " failed: " << std::string(msg, size_t(len)));
  }
  // Polls the request until it completes or the timeout passes; then the job ends (every rank: mpirun stops the
  // others when one aborts).
  void wait(MPI_Request& req, const char* what) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what);
      if (done) return;
      if (Clock::now() > deadline) {
        std::fprintf(stderr,
                     "error: %s: the %s waited %g s for the other ranks (TTT_DIST_TIMEOUT) and timed out: a rank died, "
                     "hangs or runs another step; ending every rank of the job\n",
                     describe().c_str(), what, timeout_s_);
        abort_job(1);
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(2000));
    }
  }

  double timeout_s_;
  MPI_Comm comm_;
  MPI_Datatype word_{}, dword_{};
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  }
  // Errors come back as codes (and become ttt::Error) instead of aborting inside MPI.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0, size = 1, local_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  return std::make_unique<MpiCommunicator>(rank, size, local_rank);
}


}  // namespace ttt::dist
