#include "core/file_io.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace ttt {

namespace fs = std::filesystem;

namespace {

std::atomic<int64_t> g_points{0};
std::atomic<int64_t> g_fault_point{0};
std::atomic<IoFault> g_fault{IoFault::none};

// One I/O point: true to go ahead with the operation; false with errno = ENOSPC for an injected full disk;
// an injected death does not return.
bool io_point() {
  const int64_t n = ++g_points;
  if (n != g_fault_point.load()) return true;
  switch (g_fault.load()) {
    case IoFault::die:
      ::_exit(kIoFaultExitCode);
    case IoFault::enospc:
      errno = ENOSPC;
      return false;
    case IoFault::none:
      break;
  }
  return true;
}

std::string parent_dir(const std::string& path) {
  const std::string p = fs::path(path).parent_path().string();
  return p.empty() ? "." : p;
}

}  // namespace

void inject_io_fault(int64_t point, IoFault fault) {
  g_fault_point = 0;
  g_points = 0;
  g_fault = fault;
  g_fault_point = point;
}

int64_t io_points_counted() { return g_points.load(); }

std::string read_file(const std::string& path) {
  // Only regular files: a directory would read as 0 bytes, a FIFO or device could block forever.
  struct stat st;
  TTT_CHECK(::stat(path.c_str(), &st) == 0, "cannot open '" << path << "': " << std::strerror(errno));
  TTT_CHECK(!S_ISDIR(st.st_mode), "'" << path << "' is a directory, expected a file");
  TTT_CHECK(S_ISREG(st.st_mode), "'" << path << "' is not a regular file");
  std::ifstream in(path, std::ios::binary);
  TTT_CHECK(in.good(), "cannot open '" << path << "': " << std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  TTT_CHECK(!in.bad(), "error reading '" << path << "'");
  return ss.str();
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string temp_path(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

bool is_stale_temp(const std::string& name) {
  const size_t at = name.rfind(".tmp.");
  if (at == std::string::npos) return false;
  const std::string digits = name.substr(at + 5);
  if (digits.empty() || digits.size() > 10 || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  const long long pid = std::stoll(digits);
  if (pid == ::getpid()) return true;
  return pid > 0 && pid <= 0x7fffffff && ::kill(pid_t(pid), 0) != 0 && errno == ESRCH;
}

void write_file_synced(const std::string& path, std::string_view bytes) {
  const int fd = io_point() ? ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
  TTT_CHECK(fd >= 0, "cannot create '" << path << "': " << std::strerror(errno));
  auto fail = [&](const char* what) {
    const int e = errno;
    ::close(fd);
    TTT_FAIL("cannot " << what << " '" << path << "': " << std::strerror(e));
  };
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = io_point() ? ::write(fd, bytes.data() + done, bytes.size() - done) : -1;
    if (w < 0 && errno == EINTR) continue;
    if (w == 0) errno = ENOSPC;  // no progress on a regular file: out of space
    if (w <= 0) fail("write");
    done += size_t(w);
  }
  if (!io_point() || ::fsync(fd) != 0) fail("flush");
  if (!io_point()) fail("close");
  TTT_CHECK(::close(fd) == 0, "cannot close '" << path << "': " << std::strerror(errno));
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = temp_path(path);
  try {
    write_file_synced(tmp, bytes);
    rename_path(tmp, path);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  sync_directory(parent_dir(path));
}

void make_directory(const std::string& path) {
  TTT_CHECK(io_point() && ::mkdir(path.c_str(), 0755) == 0,
            "cannot create directory '" << path << "': " << std::strerror(errno));
}

void sync_directory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  TTT_CHECK(fd >= 0, "cannot open directory '" << path << "': " << std::strerror(errno));
  // EINVAL: a file system that cannot sync directories (its renames are as durable as it makes them).
  const bool ok = io_point() && (::fsync(fd) == 0 || errno == EINVAL);
  const int e = errno;
  ::close(fd);
  TTT_CHECK(ok, "cannot flush directory '" << path << "': " << std::strerror(e));
}

void rename_path(const std::string& from, const std::string& to) {
  TTT_CHECK(io_point() && ::rename(from.c_str(), to.c_str()) == 0,
            "cannot rename '" << from << "' to '" << to << "': " << std::strerror(errno));
}

void replace_symlink(const std::string& link, const std::string& target) {
  const std::string tmp = temp_path(link);
  ::unlink(tmp.c_str());  // one left by an earlier attempt of this process
  TTT_CHECK(io_point() && ::symlink(target.c_str(), tmp.c_str()) == 0,
            "cannot create the link '" << tmp << "': " << std::strerror(errno));
  try {
    rename_path(tmp, link);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  sync_directory(parent_dir(link));
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  if (!io_point()) ec = std::error_code(errno, std::generic_category());
  else fs::remove_all(path, ec);
  TTT_CHECK(!ec, "cannot remove '" << path << "': " << ec.message());
}

}  // namespace ttt
