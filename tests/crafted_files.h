// Hostile input files of issue 10 (reproducers), shared by the library tests and the CLI error tests.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokens.h"

namespace ttt::test {

// The lact operator inputs of issue 10 item 1: every tensor but the rates has 2^62 + 1 F32 elements, whose
// byte size 4 * (2^62 + 1) wraps past 2^64 to 4, the 4 bytes its data_offsets give. A reader that computes
// the byte size without overflow checks accepts it and the operator then reads far past the buffer.
inline std::string wrapping_lact_safetensors() {
  const int64_t n = (int64_t(1) << 62) + 1;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> tensors = {
      {"w0", {1, 1, n}}, {"w1", {1, n, 1}}, {"w2", {1, 1, n}}, {"q", {1, 1, n}}, {"k", {1, 1, n}},
      {"v", {1, 1, n}},  {"lr0", {1, 1}},   {"lr1", {1, 1}},   {"lr2", {1, 1}}};
  nlohmann::json header = nlohmann::json::object();
  for (size_t i = 0; i < tensors.size(); ++i)
    header[tensors[i].first] = {{"dtype", "F32"}, {"shape", tensors[i].second}, {"data_offsets", {4 * i, 4 * i + 4}}};
  const std::string h = header.dump();
  std::string out;
  for (int b = 0; b < 8; ++b) out.push_back(char((uint64_t(h.size()) >> (8 * b)) & 0xff));
  out += h;
  for (size_t i = 0; i < tensors.size(); ++i) out.append("\x00\x00\x00\x3f", 4);  // 0.5f
  return out;
}

// The token file of issue 10 item 6: vocabulary 2^32 - 1, width 4, six tokens, all below that vocabulary;
// 0xb0eeead4 does not fit int32 (a reader casting it gets a negative id). With `issue_checksum` the bytes are
// exactly those of the issue's base64 reproducer, whose stored checksum 0x004cc6da00706000 does not match the
// payload; without it the checksum is correct, so only the vocabulary makes the file invalid.
inline std::string huge_vocab_token_file(bool issue_checksum = false) {
  const uint32_t tokens[6] = {0x0e5b8bdcu, 0xb0eeead4u, 1u, 0x2d01116fu, 0u, 5u};
  std::string payload;
  for (uint32_t t : tokens)
    for (int b = 0; b < 4; ++b) payload.push_back(char((t >> (8 * b)) & 0xff));
  auto put = [](std::string& s, uint64_t v, int bytes) {
    for (int b = 0; b < bytes; ++b) s.push_back(char((v >> (8 * b)) & 0xff));
  };
  std::string out(data::kTokenMagic, sizeof(data::kTokenMagic));
  put(out, data::kTokenFormatVersion, 4);
  put(out, 0xffffffffu, 4);  // vocab
  put(out, 4, 4);            // token width
  put(out, 0, 4);            // reserved
  put(out, 6, 8);            // n_tokens
  put(out, 1, 8);            // n_documents (one 0 token)
  put(out, issue_checksum ? 0x004cc6da00706000ull : data::fnv1a64(payload.data(), payload.size()), 8);
  return out + payload;
}

}  // namespace ttt::test
