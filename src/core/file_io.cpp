#include "core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace ttt {

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

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  TTT_CHECK(fd >= 0, "cannot create '" << tmp << "': " << std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      TTT_FAIL("write to '" << tmp << "' failed: " << std::strerror(e));
    }
    done += size_t(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    TTT_FAIL("cannot flush '" << tmp << "': " << std::strerror(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    TTT_FAIL("cannot rename '" << tmp << "' to '" << path << "': " << std::strerror(e));
  }
  // fsync the directory so the rename itself is durable.
  std::string dir = path.substr(0, path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/'));
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace ttt
