// The TCP backend of the communicator: the ranks of a torchrun-style launch (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT) without MPI. A star: rank 0 listens on MASTER_PORT, every other rank connects to it, and
// every collective goes through rank 0 (which gathers, then sends each rank its part). Simple and enough for the
// host traffic of CPU runs and for bootstrapping NCCL; not built for bandwidth (mpirun is the fast path).
//
// Failures: every wait is bounded by the collective timeout, and a peer that closes its connection (it died, or
// ended after an error) is an error at once; a rank that ends closes its own connections, so an error on one rank
// ends every rank, each with a message.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"

namespace ttt::dist {

namespace {

using Clock = std::chrono::steady_clock;

// memcpy of `bytes` that may be 0 with null pointers (an empty segment).
void copy_bytes(void* to, const void* from, int64_t bytes) {
  if (bytes > 0) std::memcpy(to, from, size_t(bytes));
}
constexpr uint64_t kHello = 0x7474742d74637031ull;  // "ttt-tcp1": a peer of this protocol

class TcpCommunicator final : public Communicator {
 public:
  TcpCommunicator(int rank, int size, int local_rank, const std::string& addr, int port)
      : Communicator(rank, size, local_rank), timeout_s_(collective_timeout_s()), peers_(size_t(size), -1) {
    if (rank == 0) listen_and_accept(port);
    else connect_to_root(addr, port);
  }
  ~TcpCommunicator() override {
    for (int fd : peers_)
      if (fd >= 0) ::close(fd);
  }
  const char* backend() const override { return "tcp"; }

 protected:
  void all_to_all_bytes(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                        const std::vector<int64_t>& recv_bytes, const char* what) override {
    const int n = size();
    // Every rank's whole send buffer to rank 0; rank 0 sends rank d the segments d of every source, in order.
    int64_t total_send = 0;
    for (int64_t b : send_bytes) total_send += b;
    if (rank() != 0) {
      send_all(0, send, total_send, what);
      int64_t total_recv = 0;
      for (int64_t b : recv_bytes) total_recv += b;
      recv_all(0, recv, total_recv, what);
      return;
    }
    // Rank 0 knows every rank's segment sizes: segment d of source s has send_bytes_of(s)[d] bytes, which equals
    // what d expects from s; for the reduce-scatter and all-gather this is counts[d] for every s.
    std::vector<std::vector<char>> from(static_cast<size_t>(n));
    from[0].resize(size_t(total_send));
    copy_bytes(from[0].data(), send, total_send);
    for (int s = 1; s < n; ++s) {
      from[size_t(s)].resize(size_t(total_send));
      recv_all(s, from[size_t(s)].data(), total_send, what);
    }
    std::vector<int64_t> offset(size_t(n), 0);
    for (int d = 1; d < n; ++d) offset[size_t(d)] = offset[size_t(d) - 1] + send_bytes[size_t(d) - 1];
    for (int d = n - 1; d >= 0; --d) {
      std::vector<char> out;
      for (int s = 0; s < n; ++s) {
        const char* seg = from[size_t(s)].data() + offset[size_t(d)];
        out.insert(out.end(), seg, seg + send_bytes[size_t(d)]);
      }
      if (d == 0) copy_bytes(recv, out.data(), int64_t(out.size()));
      else send_all(d, out.data(), int64_t(out.size()), what);
    }
  }
  void gather_bytes(const void* in, void* out, const std::vector<int64_t>& bytes, int root, const char* what) override {
    int64_t total = 0;
    for (int64_t b : bytes) total += b;
    std::vector<char> all;
    if (rank() == 0) {
      all.resize(size_t(total));
      int64_t at = 0;
      for (int s = 0; s < size(); ++s) {
        if (s == 0) copy_bytes(all.data(), in, bytes[0]);
        else recv_all(s, all.data() + at, bytes[size_t(s)], what);
        at += bytes[size_t(s)];
      }
      for (int d = 1; d < size(); ++d)
        if (root < 0 || root == d) send_all(d, all.data(), total, what);
      if (root <= 0) copy_bytes(out, all.data(), total);
    } else {
      send_all(0, in, bytes[size_t(rank())], what);
      if (root < 0 || root == rank()) recv_all(0, out, total, what);
    }
  }
  void broadcast_bytes(void* data, int64_t bytes, int root) override {
    if (root != 0) {  // to rank 0 first
      if (rank() == root) send_all(0, data, bytes, "broadcast");
      if (rank() == 0) recv_all(root, data, bytes, "broadcast");
    }
    if (rank() == 0) {
      for (int d = 1; d < size(); ++d)
        if (d != root) send_all(d, data, bytes, "broadcast");
    } else if (rank() != root) {
      recv_all(0, data, bytes, "broadcast");
    }
  }
  void barrier_impl() override {
    char token = 0;
    gather_bytes(&token, &token, std::vector<int64_t>(size_t(size()), 0), -1, "barrier");
  }

 private:
  Clock::time_point after_timeout() const {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  }
  // Rank 0 talks to every rank; the others to rank 0 only.
  int fd_of(int peer) const { return rank() == 0 ? peers_[size_t(peer)] : peers_[0]; }

  [[noreturn]] void fail(int peer, const char* what, const std::string& why) const {
    TTT_FAIL(describe() << ": the " << what << " with rank " << peer << " failed: " << why);
  }

  // Waits until fd is ready for `events`, at most until the collective's deadline.
  void wait_ready(int fd, short events, Clock::time_point deadline, int peer, const char* what) const {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0)
        fail(peer, what, "no answer within " + std::to_string(timeout_s_) +
                             " s (TTT_DIST_TIMEOUT): a rank died, hangs or runs another step");
      pollfd p{fd, events, 0};
      const int rc = ::poll(&p, 1, int(std::min<int64_t>(left, 1000)));
      if (rc > 0) return;
      if (rc < 0 && errno != EINTR) fail(peer, what, std::strerror(errno));
    }
  }

  void send_all(int peer, const void* data, int64_t bytes, const char* what) const {
    const int fd = fd_of(peer);
    const Clock::time_point deadline = after_timeout();
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      wait_ready(fd, POLLOUT, deadline, peer, what);
      const ssize_t n = ::send(fd, p, size_t(std::min<int64_t>(bytes, int64_t(1) << 30)), MSG_NOSIGNAL);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) fail(peer, what, std::string("the connection closed (") + std::strerror(errno) + "): the rank ended");
      p += n;
      bytes -= n;
    }
  }

  void recv_all(int peer, void* data, int64_t bytes, const char* what) const {
    const int fd = fd_of(peer);
    const Clock::time_point deadline = after_timeout();
    char* p = static_cast<char*>(data);
    while (bytes > 0) {
      wait_ready(fd, POLLIN, deadline, peer, what);
      const ssize_t n = ::recv(fd, p, size_t(std::min<int64_t>(bytes, int64_t(1) << 30)), 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n == 0) fail(peer, what, "the connection closed: the rank ended (an error or a crash there)");
      if (n < 0) fail(peer, what, std::strerror(errno));
      p += n;
      bytes -= n;
    }
  }

  void listen_and_accept(int port) {
    const int ls = ::socket(AF_INET, SOCK_STREAM, 0);
    TTT_CHECK(ls >= 0, describe() << ": socket: " << std::strerror(errno));
    const int one = 1;
    ::setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(uint16_t(port));
    if (::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(ls, size()) != 0) {
      const std::string why = std::strerror(errno);
      ::close(ls);
      TTT_FAIL(describe() << ": cannot listen on MASTER_PORT=" << port << ": " << why);
    }
    const Clock::time_point deadline = after_timeout();
    for (int joined = 1; joined < size(); ++joined) {
      wait_ready(ls, POLLIN, deadline, -1, "start (waiting for the other ranks to connect)");
      const int fd = ::accept(ls, nullptr, nullptr);
      if (fd < 0) {
        --joined;
        continue;
      }
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      peers_[0] = fd;  // fd_of(0) on a fresh connection, until its rank is known
      uint64_t hello[3] = {0, 0, 0};
      recv_all(0, hello, sizeof hello, "start");
      const int64_t r = int64_t(hello[1]), n = int64_t(hello[2]);
      if (hello[0] != kHello || n != size() || r <= 0 || r >= size() || peers_[size_t(r)] >= 0) {
        ::close(fd);
        ::close(ls);
        TTT_FAIL(describe() << ": a process connected to MASTER_PORT=" << port << " as rank " << r << " of " << n
                            << ", but this job has WORLD_SIZE=" << size()
                            << " (a rank twice, or another job on the port)");
      }
      peers_[size_t(r)] = fd;
      peers_[0] = -1;
    }
    ::close(ls);
  }

  void connect_to_root(const std::string& addr, int port) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    const int rc = ::getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &res);
    TTT_CHECK(rc == 0 && res, describe() << ": MASTER_ADDR='" << addr << "': " << ::gai_strerror(rc));
    const Clock::time_point deadline = after_timeout();
    int fd = -1;
    for (;;) {  // rank 0 may not listen yet
      fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) break;
      if (fd >= 0) ::close(fd);
      if (Clock::now() > deadline) {
        ::freeaddrinfo(res);
        TTT_FAIL(describe() << ": rank 0 did not accept a connection at MASTER_ADDR=" << addr << " MASTER_PORT=" << port
                            << " within " << timeout_s_ << " s (TTT_DIST_TIMEOUT)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::freeaddrinfo(res);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    peers_[0] = fd;
    const uint64_t hello[3] = {kHello, uint64_t(rank()), uint64_t(size())};
    send_all(0, hello, sizeof hello, "start");
  }

  double timeout_s_;
  std::vector<int> peers_;  // rank 0: a socket per rank; others: [0] the socket to rank 0
};

}  // namespace

std::unique_ptr<Communicator> make_tcp_communicator(int rank, int size, int local_rank, const std::string& master_addr,
                                                    int master_port) {
  return std::make_unique<TcpCommunicator>(rank, size, local_rank, master_addr, master_port);
}

}  // namespace ttt::dist
