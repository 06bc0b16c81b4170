// Core: tensors, bf16, RNG, safetensors (round trip and malformed files).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/blas.h"
#include "core/checked.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "crafted_files.h"
#include "expect_error.h"

using namespace ttt;

using test::expect_error;

TEST(Tensor, ShapesAndConversion) {
  Tensor t = Tensor::zeros({2, 3}, DType::F64);
  for (int i = 0; i < 6; ++i) t.set(i, i * 0.5);
  Tensor f = t.to(DType::F32);
  EXPECT_EQ(f.dtype(), DType::F32);
  EXPECT_EQ(f.shape(), (Shape{2, 3}));
  EXPECT_FLOAT_EQ(float(f.get(5)), 2.5f);
  Tensor s = t.slice(1, 1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  EXPECT_DOUBLE_EQ(s.get(0), 0.5);
  EXPECT_DOUBLE_EQ(s.get(2), 2.0);
  EXPECT_THROW(t.reshape({4, 2}), Error);
  EXPECT_EQ(t.reshape({3, -1}).shape(), (Shape{3, 2}));
  EXPECT_THROW(t.data<float>(), Error);
}

TEST(Tensor, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3f80);
  EXPECT_FLOAT_EQ(bf16_to_float(float_to_bf16(3.140625f)), 3.140625f);
  float x = 1.0f + 1.0f / 256.0f;  // halfway between two bf16 values: rounds to even (1.0)
  EXPECT_FLOAT_EQ(bf16_to_float(float_to_bf16(x)), 1.0f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST(Blas, Bf16OperandEmulationRoundsOperandsOnly) {
  const float a[2] = {1.0f + 1.0f / 512.0f, 3.0f};  // 1 + 2^-9 rounds to 1 in bf16; 3 is exact
  const float b[2] = {1.0f, 1.0f / 1024.0f};         // 2^-10 is exact
  float c = 0;
  gemm<float>(false, false, 1, 1, 2, 1.0f, a, 2, b, 1, 0.0f, &c, 1);
  EXPECT_EQ(c, a[0] + 3.0f / 1024.0f);  // off: exact float operands
  {
    BF16OperandsEmulation on;
    EXPECT_TRUE(emulate_bf16_operands());
    gemm<float>(false, false, 1, 1, 2, 1.0f, a, 2, b, 1, 0.0f, &c, 1);
    EXPECT_EQ(c, 1.0f + 3.0f / 1024.0f);  // operands rounded, accumulation in float
  }
  EXPECT_FALSE(emulate_bf16_operands());
  EXPECT_EQ(round_to_bf16(1.0f + 3.0f / 512.0f), 1.0f + 1.0f / 128.0f);  // 3/4 of a bf16 step: up
}

TEST(Rng, DeterministicAndRestorable) {
  Rng a(42), b(42);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  a.normal();
  auto st = a.save();
  double n1 = a.normal(), n2 = a.normal();
  Rng c;
  c.load(st);
  EXPECT_EQ(c.normal(), n1);
  EXPECT_EQ(c.normal(), n2);
  double mean = 0;
  for (int i = 0; i < 20000; ++i) mean += a.normal();
  EXPECT_NEAR(mean / 20000, 0.0, 0.05);
}

TEST(SafeTensors, RoundTripAllDtypes) {
  SafeTensors st;
  Tensor a = Tensor::zeros({2, 2}, DType::F64), b = Tensor::zeros({3}, DType::F32), c = Tensor::zeros({1, 2, 2}, DType::BF16);
  for (int i = 0; i < 4; ++i) a.set(i, 1.0 / (i + 1));
  for (int i = 0; i < 3; ++i) b.set(i, -i * 1.5);
  for (int i = 0; i < 4; ++i) c.set(i, i * 0.25);
  st.add("a", a);
  st.add("b", b);
  st.add("c", c);
  st.metadata["format"] = "pt";
  SafeTensors back = safetensors_parse(safetensors_serialize(st), "mem");
  ASSERT_EQ(back.tensors.size(), 3u);
  EXPECT_EQ(back.metadata.at("format"), "pt");
  EXPECT_EQ(back.get("a").dtype(), DType::F64);
  EXPECT_DOUBLE_EQ(back.get("a").get(2), 1.0 / 3);
  EXPECT_EQ(back.get("c").dtype(), DType::BF16);
  EXPECT_DOUBLE_EQ(back.get("c").get(3), 0.75);
  EXPECT_EQ(back.get("b").shape(), (Shape{3}));
}

// I64 (the token ids `ttt logits` writes): exact through a file, and a float that no int64 holds is refused.
TEST(SafeTensors, I64RoundTripAndOutOfRangeValues) {
  SafeTensors st;
  Tensor ids = Tensor::zeros({3}, DType::I64);
  const int64_t big = (int64_t(1) << 53) + 1;  // not a double: must not pass through one on the way to the file
  ids.data<int64_t>()[0] = big;
  ids.data<int64_t>()[1] = -7;
  ids.set(2, 255.0);
  st.add("ids", ids);
  SafeTensors back = safetensors_parse(safetensors_serialize(st), "mem");
  EXPECT_EQ(back.get("ids").dtype(), DType::I64);
  EXPECT_EQ(back.get("ids").data<int64_t>()[0], big);
  EXPECT_EQ(back.get("ids").data<int64_t>()[1], -7);
  EXPECT_EQ(back.get("ids").data<int64_t>()[2], 255);
  Tensor f = Tensor::zeros({2}, DType::F32);
  f.set(1, std::numeric_limits<double>::quiet_NaN());
  test::expect_error([&] { f.to(DType::I64); }, "does not fit an I64");
  f.set(1, 1e30);
  test::expect_error([&] { f.to(DType::I64); }, "does not fit an I64");
}

TEST(SafeTensors, MalformedAndTruncatedGiveClearErrors) {
  SafeTensors st;
  st.add("x", Tensor::zeros({4, 4}, DType::F32));
  std::string bytes = safetensors_serialize(st);
  auto expect_msg = [](const std::string& b, const std::string& needle) {
    try {
      safetensors_parse(b, "f.safetensors");
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_msg(bytes.substr(0, 5), "not a safetensors file");
  expect_msg(bytes.substr(0, bytes.size() - 4), "truncated");
  std::string bad = bytes;
  bad[0] = char(0xff);
  bad[1] = char(0xff);
  expect_msg(bad, "header length");
  std::string garbage = bytes;
  garbage[9] = '#';
  expect_msg(garbage, "malformed");
}

TEST(Checked, ProductsAndSumsThatDoNotFitAreRefused) {
  const int64_t max = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(mul_if_fits<int64_t>(int64_t(1) << 31, int64_t(1) << 31), int64_t(1) << 62);
  EXPECT_FALSE(mul_if_fits<int64_t>(int64_t(1) << 32, int64_t(1) << 31));
  EXPECT_FALSE(mul_if_fits<int64_t>(-2, (int64_t(1) << 62) + 1));
  EXPECT_FALSE(mul_if_fits<size_t>(size_t(1) << 62, 4));
  EXPECT_EQ(add_if_fits<int64_t>(max - 1, 1), max);
  EXPECT_FALSE(add_if_fits<int64_t>(max, 1));
  EXPECT_EQ(checked_mul<int64_t>(6, 7, "x"), 42);
  expect_error([&] { checked_mul<int64_t>(max, 2, "model config: dim"); },
               {"model config: dim: 9223372036854775807 * 2 overflows a 64-bit integer"});
  expect_error([&] { checked_add<int64_t>(max, max, "count"); }, {"count: ", " + ", "overflows"});
}

// Issue 10 items 1 and 7: element and byte counts of a shape are overflow-checked (never wrapped or signed
// overflow), so no tensor can have less storage than its shape claims.
TEST(Tensor, SizeArithmeticIsOverflowChecked) {
  const int64_t big = int64_t(1) << 32;
  expect_error([&] { shape_numel({big, big}); }, {"[4294967296,4294967296]", "overflows"});
  EXPECT_EQ(shape_numel({big, big / 2 - 1, 0}), 0);  // zero elements, every stride fits
  EXPECT_EQ(shape_numel({big, big / 2 - 1}), big * (big / 2 - 1));
  // 4 * (2^62 + 1) bytes wraps to 4 in 64-bit arithmetic.
  const int64_t wraps = (int64_t(1) << 62) + 1;
  EXPECT_EQ(shape_nbytes({1, wraps}, DType::BF16), size_t(wraps) * 2);
  expect_error([&] { shape_nbytes({1, wraps}, DType::F32); }, {"F32[1,4611686018427387905]", "bytes"});
  expect_error([&] { Tensor::empty({1, 1, wraps}, DType::F32); }, {"F32[1,1,4611686018427387905]"});
  expect_error([&] { Tensor::empty({big, big}, DType::F64); }, {"overflows"});
  Tensor t = Tensor::zeros({4}, DType::F32);
  expect_error([&] { t.reshape({-1, big, big}); }, {"cannot reshape"});
  expect_error([&] { t.reshape({-2, -2}); }, {"cannot reshape"});
}

// Issue 10 item 1: a crafted file whose shapes' byte sizes wrap past 2^64 is refused by the reader.
TEST(SafeTensors, ByteSizeThatWrapsIsRejected) {
  expect_error([] { safetensors_parse(test::wrapping_lact_safetensors(), "x.st"); }, {"x.st", "tensor '", "overflows"});
  // Element count and byte range must agree exactly.
  SafeTensors st;
  st.add("x", Tensor::zeros({2, 3}, DType::F32));
  std::string bytes = safetensors_serialize(st);
  const size_t at = bytes.find("[2,3]");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 3] = '2';  // shape [2,2]: 16 bytes, offsets give 24
  expect_error([&] { safetensors_parse(bytes, "m.st"); }, {"'x'", "needs 16 bytes", "24"});
}

// Issue 10 item 7: tensors with no element (no storage) round trip; the sanitizer build catches a
// memcpy to the null storage of such a tensor.
TEST(SafeTensors, ZeroElementTensorsRoundTrip) {
  SafeTensors st;
  st.add("empty", Tensor::zeros({0}, DType::F32));
  st.add("hollow", Tensor::zeros({2, 0, 3}, DType::BF16));
  st.add("x", Tensor::zeros({2}, DType::F64));
  SafeTensors back = safetensors_parse(safetensors_serialize(st), "mem");
  ASSERT_EQ(back.tensors.size(), 3u);
  EXPECT_EQ(back.get("empty").shape(), (Shape{0}));
  EXPECT_EQ(back.get("hollow").shape(), (Shape{2, 0, 3}));
  EXPECT_EQ(back.get("hollow").nbytes(), 0u);
  const Tensor copy = back.get("hollow").to(DType::F32).slice(0, 1, 2).clone();
  EXPECT_EQ(copy.shape(), (Shape{1, 0, 3}));
  // Found by fuzz_safetensors: an empty tensor shares its offset with the next tensor, and the header lists
  // that one first ("a" < "b"); the reader took the empty range for an overlap and refused our own file.
  SafeTensors shared;
  shared.add("b", Tensor::zeros({0}, DType::F32));
  shared.add("a", Tensor::zeros({2}, DType::F32));
  const SafeTensors again = safetensors_parse(safetensors_serialize(shared), "shared.st");
  EXPECT_EQ(again.get("a").shape(), (Shape{2}));
  EXPECT_EQ(again.get("b").shape(), (Shape{0}));
  // Ranges that do overlap are still refused.
  SafeTensors two;
  two.add("p", Tensor::zeros({2}, DType::F32));
  two.add("q", Tensor::zeros({2}, DType::F32));
  std::string bytes = safetensors_serialize(two);
  const size_t q_at = bytes.find("[8,16]");
  ASSERT_NE(q_at, std::string::npos);
  bytes.replace(q_at, 6, "[4,12]");
  expect_error([&] { safetensors_parse(bytes, "o.st"); }, {"'p' and 'q' overlap"});
}
