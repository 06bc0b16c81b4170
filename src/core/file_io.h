// Whole-file reads and crash-safe writes.
//
// Every operation below that changes the file system is an "I/O point": each create, write(2) call, fsync,
// close, rename, mkdir, symlink and removal counts as one. Tests make the N-th point fail (inject_io_fault) to
// check that a process killed, or out of disk space, at any point leaves its files usable.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace ttt {

std::string read_file(const std::string& path);  // throws ttt::Error naming the path
bool file_exists(const std::string& path);

// Replaces `path` atomically: writes and fsyncs the temp file temp_path(path), renames it over `path`, fsyncs
// the directory. A failure removes the temp file and throws ttt::Error naming the path and the cause.
void write_file_atomic(const std::string& path, std::string_view bytes);
// Creates (or truncates) `path`, writes `bytes` and fsyncs it: for files inside a directory that is itself
// renamed into place once complete.
void write_file_synced(const std::string& path, std::string_view bytes);
void make_directory(const std::string& path);  // mkdir; an existing directory is an error
void sync_directory(const std::string& path);  // fsync of a directory: makes the renames in it durable
void rename_path(const std::string& from, const std::string& to);  // rename(2)
// Points the symbolic link `link` at `target` atomically (a temp link renamed over it) and fsyncs its directory.
void replace_symlink(const std::string& link, const std::string& target);
void remove_tree(const std::string& path);  // a file, a link or a directory tree; a missing path is fine

// Temp names: "<path>.tmp.<pid of the writer>". A temp entry is stale when its writer is this process or no
// longer runs: it is what a killed save left behind.
std::string temp_path(const std::string& path);
bool is_stale_temp(const std::string& name);

// ---- Test hook: fault injection. ----
enum class IoFault {
  none,    // count the points only
  enospc,  // the operation fails with ENOSPC (a full disk): ttt::Error
  die,     // the process exits at once with kIoFaultExitCode, as if killed (the operation does not happen)
};
inline constexpr int kIoFaultExitCode = 86;
// Restarts the count of I/O points; the `point`-th one from now (1-based; 0: none) gets `fault`.
void inject_io_fault(int64_t point, IoFault fault);
int64_t io_points_counted();  // I/O points since the last inject_io_fault call

}  // namespace ttt
