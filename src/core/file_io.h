// Whole-file reads and atomic writes (temp file, fsync, rename).
#pragma once
#include <string>
#include <string_view>

namespace ttt {

std::string read_file(const std::string& path);  // throws ttt::Error naming the path
void write_file_atomic(const std::string& path, std::string_view bytes);
bool file_exists(const std::string& path);

}  // namespace ttt
