// safetensors: 8-byte little-endian header length, JSON header, raw little-endian data.
// Supports F64, F32 and BF16. Malformed or truncated files give a ttt::Error naming the problem: among
// others a shape whose byte size overflows 64 bits, a byte range that does not hold exactly the shape's
// bytes, ranges past the data or overlapping (an empty tensor overlaps nothing).
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace ttt {

struct SafeTensors {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file order
  std::map<std::string, std::string> metadata;           // "__metadata__" (string values)

  bool has(const std::string& name) const;
  const Tensor& get(const std::string& name) const;  // throws if missing
  const Tensor* find(const std::string& name) const;
  void add(const std::string& name, Tensor t);
};

SafeTensors safetensors_parse(const std::string& bytes, const std::string& origin);
SafeTensors safetensors_load(const std::string& path);
// Only the "__metadata__" of a file (reads the header, not the tensors).
std::map<std::string, std::string> safetensors_load_metadata(const std::string& path);
std::string safetensors_serialize(const SafeTensors& st);
void safetensors_save(const std::string& path, const SafeTensors& st);  // atomic

}  // namespace ttt
