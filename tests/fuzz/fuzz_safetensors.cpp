// libFuzzer target: the safetensors reader (safetensors_parse) on arbitrary bytes. An accepted file must
// have every tensor's storage match its shape (every element is read) and survive a write/read round trip.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/safetensors.h"
#include "fuzz_common.h"

using namespace ttt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  SafeTensors st;
  if (!fuzz::accepts([&] { st = safetensors_parse(bytes, "fuzz.safetensors"); })) return 0;
  for (const auto& [name, t] : st.tensors) {
    fuzz::require(t.nbytes() == shape_nbytes(t.shape(), t.dtype()), "tensor storage matches its shape");
    (void)t.all_finite();  // reads every element: ASan catches storage shorter than the shape
  }
  const std::string again = safetensors_serialize(st);
  const SafeTensors back = safetensors_parse(again, "round trip");  // must not throw
  fuzz::require(back.tensors.size() == st.tensors.size() && back.metadata == st.metadata, "round trip keeps the entries");
  for (size_t i = 0; i < st.tensors.size(); ++i) {
    const Tensor& a = st.tensors[i].second;
    const Tensor& b = back.tensors[i].second;
    fuzz::require(st.tensors[i].first == back.tensors[i].first && a.shape() == b.shape() && a.dtype() == b.dtype() &&
                      (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0),
                  "round trip keeps every tensor");
  }
  return 0;
}
