// libFuzzer target: the token-file reader (data::parse_tokens) on arbitrary bytes. The library's own writer
// must accept whatever the reader accepts, and reproduce the same bytes (a version 1 file as version 2: the same
// header but for the version, its separator field being 0 in both).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "data/tokens.h"
#include "fuzz_common.h"

using namespace ttt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  data::TokenFile tf;
  if (!fuzz::accepts([&] { tf = data::parse_tokens(bytes, "fuzz.bin"); })) return 0;
  for (int32_t t : tf.tokens) fuzz::require(t >= 0 && uint64_t(t) < tf.vocab, "every token id is in [0, vocab)");
  std::string expect(bytes);
  if (expect[8] == 1) expect[8] = char(data::kTokenFormatVersion);
  fuzz::require(data::serialize_tokens(tf) == expect, "the writer reproduces an accepted file");  // must not throw
  return 0;
}
