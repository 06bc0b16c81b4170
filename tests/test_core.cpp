// Core: tensors, bf16, RNG, safetensors (round trip and malformed files).
#include <gtest/gtest.h>

#include <cmath>

#include "core/blas.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/tensor.h"

using namespace ttt;

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
