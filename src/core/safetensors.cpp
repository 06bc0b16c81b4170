#include "core/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/file_io.h"

namespace ttt {

using json = nlohmann::json;

bool SafeTensors::has(const std::string& name) const { return find(name) != nullptr; }

const Tensor* SafeTensors::find(const std::string& name) const {
  for (auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

const Tensor& SafeTensors::get(const std::string& name) const {
  const Tensor* t = find(name);
  TTT_CHECK(t, "tensor '" << name << "' not found");
  return *t;
}

void SafeTensors::add(const std::string& name, Tensor t) {
  TTT_CHECK(!has(name), "duplicate tensor name '" << name << "'");
  tensors.emplace_back(name, t.contiguous());
}

static DType parse_dtype(const std::string& s, const std::string& origin, const std::string& name) {
  if (s == "F32") return DType::F32;
  if (s == "F64") return DType::F64;
  if (s == "BF16") return DType::BF16;
  if (s == "I64") return DType::I64;
  TTT_FAIL(origin << ": tensor '" << name << "' has dtype " << s << "; supported: F64, F32, BF16, I64");
}

namespace {

// The header length (the first 8 bytes, little-endian), checked against the `size` bytes of the whole file.
uint64_t header_length(const std::string& first_bytes, size_t size, const std::string& origin) {
  TTT_CHECK(first_bytes.size() >= 8, origin << ": not a safetensors file (" << size << " bytes, header length needs 8)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint8_t(first_bytes[size_t(i)]);
  TTT_CHECK(header_len <= size - 8, origin << ": truncated or not a safetensors file (header length " << header_len
                                           << " but only " << size - 8 << " bytes follow)");
  return header_len;
}

json parse_header(const char* begin, uint64_t header_len, const std::string& origin) {
  json header;
  try {
    header = json::parse(begin, begin + header_len);
  } catch (const std::exception& e) {
    TTT_FAIL(origin << ": malformed safetensors header: " << e.what());
  }
  TTT_CHECK(header.is_object(), origin << ": safetensors header is not a JSON object");
  return header;
}

std::map<std::string, std::string> parse_metadata(const json& header, const std::string& origin) {
  std::map<std::string, std::string> metadata;
  auto it = header.find("__metadata__");
  if (it == header.end()) return metadata;
  TTT_CHECK(it->is_object(), origin << ": __metadata__ is not an object");
  for (auto m = it->begin(); m != it->end(); ++m) {
    TTT_CHECK(m->is_string(), origin << ": metadata value for '" << m.key() << "' is not a string");
    metadata[m.key()] = m->get<std::string>();
  }
  return metadata;
}

}  // namespace

SafeTensors safetensors_parse(const std::string& bytes, const std::string& origin) {
  const uint64_t header_len = header_length(bytes, bytes.size(), origin);
  const json header = parse_header(bytes.data() + 8, header_len, origin);
  const size_t data_start = 8 + header_len;
  const size_t data_size = bytes.size() - data_start;

  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    size_t begin, end;
  };
  std::vector<Entry> entries;
  SafeTensors st;
  st.metadata = parse_metadata(header, origin);
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const json& e = *it;
    TTT_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"),
              origin << ": tensor '" << it.key() << "' entry lacks dtype/shape/data_offsets");
    TTT_CHECK(e["dtype"].is_string() && e["shape"].is_array() && e["data_offsets"].is_array() &&
                  e["data_offsets"].size() == 2,
              origin << ": tensor '" << it.key() << "' entry is malformed");
    Entry en;
    en.name = it.key();
    en.dtype = parse_dtype(e["dtype"].get<std::string>(), origin, en.name);
    for (auto& d : e["shape"]) {
      TTT_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, origin << ": tensor '" << en.name << "' has a bad shape");
      en.shape.push_back(d.get<int64_t>());
    }
    TTT_CHECK(e["data_offsets"][0].is_number_unsigned() && e["data_offsets"][1].is_number_unsigned(),
              origin << ": tensor '" << en.name << "' has bad data_offsets");
    en.begin = e["data_offsets"][0].get<size_t>();
    en.end = e["data_offsets"][1].get<size_t>();
    TTT_CHECK(en.begin <= en.end, origin << ": tensor '" << en.name << "' has data_offsets end before begin");
    size_t need = 0;
    try {
      need = shape_nbytes(en.shape, en.dtype);
    } catch (const Error& e) {
      TTT_FAIL(origin << ": tensor '" << en.name << "': " << e.what());
    }
    TTT_CHECK(en.end - en.begin == need, origin << ": tensor '" << en.name << "' " << dtype_name(en.dtype)
                                                << shape_str(en.shape) << " needs " << need << " bytes, offsets give "
                                                << en.end - en.begin);
    TTT_CHECK(en.end <= data_size, origin << ": truncated file: tensor '" << en.name << "' ends at byte " << en.end
                                          << " of the data section, which has only " << data_size << " bytes");
    entries.push_back(en);
  }
  // File order; an empty range occupies no byte, so it overlaps nothing (the writer may give it the offset of
  // the next tensor). Stable, so equal ranges keep the header's order and a write/read round trip keeps it.
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return std::pair(a.begin, a.end) < std::pair(b.begin, b.end); });
  const Entry* last = nullptr;  // the last non-empty range
  for (const Entry& en : entries) {
    if (en.begin == en.end) continue;
    TTT_CHECK(!last || en.begin >= last->end, origin << ": tensors '" << last->name << "' and '" << en.name << "' overlap");
    last = &en;
  }
  for (auto& en : entries) {
    Tensor t = Tensor::empty(en.shape, en.dtype);
    copy_bytes(t.raw(), bytes.data() + data_start + en.begin, en.end - en.begin);
    st.tensors.emplace_back(en.name, t);
  }
  return st;
}

SafeTensors safetensors_load(const std::string& path) { return safetensors_parse(read_file(path), path); }

std::map<std::string, std::string> safetensors_load_metadata(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  TTT_CHECK(in.good(), "cannot open '" << path << "'");
  const size_t size = size_t(in.tellg());
  in.seekg(0);
  std::string head(std::min<size_t>(size, 8), '\0');
  in.read(head.data(), std::streamsize(head.size()));
  const uint64_t header_len = header_length(head, size, path);
  std::string header(header_len, '\0');
  in.read(header.data(), std::streamsize(header_len));
  TTT_CHECK(in.good(), "error reading '" << path << "'");
  return parse_metadata(parse_header(header.data(), header_len, path), path);
}

std::string safetensors_serialize(const SafeTensors& st) {
  json header = json::object();
  if (!st.metadata.empty()) header["__metadata__"] = st.metadata;
  size_t offset = 0;
  for (auto& [name, t] : st.tensors) {
    header[name] = {{"dtype", dtype_name(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // align data to 8 bytes, as the format recommends
  std::string out(8, '\0');
  uint64_t len = h.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((len >> (8 * i)) & 0xff);
  out += h;
  out.reserve(out.size() + offset);
  for (auto& [name, t] : st.tensors) {
    Tensor c = t.contiguous();
    out.append(reinterpret_cast<const char*>(c.raw()), c.nbytes());
  }
  return out;
}

void safetensors_save(const std::string& path, const SafeTensors& st) {
  write_file_atomic(path, safetensors_serialize(st));
}

}  // namespace ttt
