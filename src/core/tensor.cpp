#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/checked.h"

namespace ttt {

float round_to_fp16(float f) {
  if (!std::isfinite(f) || f == 0.0f) return f;
  const float a = std::fabs(f);
  if (a >= 65520.0f) return std::copysign(INFINITY, f);
  int e = 0;
  std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1): the leading bit is 2^(e-1)
  // 10 fraction bits below the leading one; below 2^-14 the subnormals' fixed quantum 2^-24.
  const int qexp = std::max(e - 1, -14) - 10;
  return std::ldexp(std::nearbyint(std::ldexp(f, -qexp)), qexp);
}

float round_to_tf32(float f) {
  if (!std::isfinite(f)) return f;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x1000u) & ~0x1fffu;  // add half of the 13 dropped bits' unit (ties away), then drop them
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

// Multiplied from the last dimension, as the strides are: every partial product is a stride and must fit
// too (so [0, 2^40, 2^40] is refused while [2^40, 2^40, 0] has zero elements).
int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d = s.rbegin(); d != s.rend(); ++d) {
    const std::optional<int64_t> next = mul_if_fits(n, *d);
    TTT_CHECK(next, "shape " << shape_str(s) << ": the element count overflows a 64-bit integer");
    n = *next;
  }
  return n;
}

size_t shape_nbytes(const Shape& s, DType dtype) {
  for (auto d : s) TTT_CHECK(d >= 0, "negative dimension in shape " << shape_str(s));
  const int64_t n = shape_numel(s);
  const std::optional<size_t> bytes = mul_if_fits(size_t(n), dtype_size(dtype));
  TTT_CHECK(bytes, dtype_name(dtype) << shape_str(s) << ": the byte size (" << n << " elements x " << dtype_size(dtype)
                                     << " bytes) overflows a 64-bit integer");
  return *bytes;
}

void copy_bytes(void* dst, const void* src, size_t n) {
  if (n > 0) std::memcpy(dst, src, n);
}

static Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = int64_t(s.size()) - 1; i >= 0; --i) {
    st[size_t(i)] = acc;
    acc *= s[size_t(i)];
  }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  const size_t bytes = shape_nbytes(shape, dtype);
  TTT_CHECK(device == Device::CPU, "Tensor storage on " << device_name(device) << " is managed by the CUDA backend");
  Tensor t;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<std::vector<std::byte>>(bytes);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return empty(shape, dtype, device);  // vector<byte> value-initializes to zero
}

int64_t Tensor::size(int64_t i) const {
  if (i < 0) i += dim();
  TTT_CHECK(i >= 0 && i < dim(), "dimension " << i << " out of range for " << describe());
  return shape_[size_t(i)];
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

std::string Tensor::describe() const { return std::string(dtype_name(dtype_)) + shape_str(shape_); }

void* Tensor::raw() {
  TTT_CHECK(defined(), "access to an undefined tensor");
  return storage_->data() + size_t(offset_) * dtype_size(dtype_);
}
const void* Tensor::raw() const {
  TTT_CHECK(defined(), "access to an undefined tensor");
  return storage_->data() + size_t(offset_) * dtype_size(dtype_);
}

double Tensor::get(int64_t i) const {
  TTT_CHECK(is_contiguous(), "get() needs a contiguous tensor");
  switch (dtype_) {
    case DType::F32: return reinterpret_cast<const float*>(raw())[i];
    case DType::F64: return reinterpret_cast<const double*>(raw())[i];
    case DType::BF16: return bf16_to_float(reinterpret_cast<const bf16*>(raw())[i]);
    case DType::I64: return double(reinterpret_cast<const int64_t*>(raw())[i]);
  }
  return 0;
}
void Tensor::set(int64_t i, double v) {
  TTT_CHECK(is_contiguous(), "set() needs a contiguous tensor");
  switch (dtype_) {
    case DType::F32: reinterpret_cast<float*>(raw())[i] = float(v); break;
    case DType::F64: reinterpret_cast<double*>(raw())[i] = v; break;
    case DType::BF16: reinterpret_cast<bf16*>(raw())[i] = float_to_bf16(float(v)); break;
    case DType::I64:
      // The conversion of a double outside int64's range (or NaN) is undefined: refused instead.
      TTT_CHECK(v >= -9223372036854775808.0 && v < 9223372036854775808.0,
                "value " << v << " does not fit an I64 tensor element");
      reinterpret_cast<int64_t*>(raw())[i] = int64_t(v);
      break;
  }
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = empty(shape_, dtype_, device_);
  const size_t es = dtype_size(dtype_);
  const int64_t n = numel();
  std::vector<int64_t> idx(shape_.size(), 0);
  const std::byte* src = storage_->data();
  std::byte* dst = reinterpret_cast<std::byte*>(out.raw());
  for (int64_t flat = 0; flat < n; ++flat) {
    int64_t off = offset_;
    for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * strides_[d];
    std::memcpy(dst + size_t(flat) * es, src + size_t(off) * es, es);
    for (int64_t d = int64_t(idx.size()) - 1; d >= 0; --d) {
      if (++idx[size_t(d)] < shape_[size_t(d)]) break;
      idx[size_t(d)] = 0;
    }
  }
  return out;
}

Tensor Tensor::to(DType dtype) const {
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype, device_);
  const int64_t n = numel();
  if (dtype == dtype_) {
    copy_bytes(out.raw(), src.raw(), nbytes());
    return out;
  }
  for (int64_t i = 0; i < n; ++i) out.set(i, src.get(i));
  return out;
}

Tensor Tensor::clone() const { return to(dtype_); }

Tensor Tensor::reshape(const Shape& shape) const {
  TTT_CHECK(is_contiguous(), "reshape of a non-contiguous tensor " << describe());
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      TTT_CHECK(infer < 0, "reshape " << shape_str(shape) << ": more than one -1");
      infer = int64_t(i);
    } else {
      const std::optional<int64_t> next = mul_if_fits(known, s[i]);
      TTT_CHECK(s[i] >= 0 && next, "cannot reshape " << describe() << " to " << shape_str(shape));
      known = *next;
    }
  }
  if (infer >= 0) {
    TTT_CHECK(known > 0 && numel() % known == 0, "cannot reshape " << describe() << " to " << shape_str(shape));
    s[size_t(infer)] = numel() / known;
  }
  TTT_CHECK(shape_numel(s) == numel(), "cannot reshape " << describe() << " to " << shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  if (d < 0) d += dim();
  TTT_CHECK(d >= 0 && d < dim(), "slice dimension " << d << " out of range for " << describe());
  TTT_CHECK(0 <= start && start <= end && end <= shape_[size_t(d)],
            "slice [" << start << "," << end << ") out of range for dim " << d << " of " << describe());
  Tensor view = *this;
  view.shape_[size_t(d)] = end - start;
  view.offset_ += start * strides_[size_t(d)];
  Tensor c = view.contiguous();
  if (c.storage_ == storage_) {  // already contiguous view: copy so callers own their data
    Tensor out = empty(view.shape_, dtype_, device_);
    copy_bytes(out.raw(), c.raw(), out.nbytes());
    return out;
  }
  return c;
}

bool Tensor::all_finite() const {
  Tensor c = contiguous();
  for (int64_t i = 0; i < numel(); ++i)
    if (!std::isfinite(c.get(i))) return false;
  return true;
}

void check_shape(const Tensor& t, const Shape& shape, const std::string& name) {
  TTT_CHECK(t.defined(), "tensor '" << name << "' is missing (expected shape " << shape_str(shape) << ")");
  TTT_CHECK(t.shape() == shape, "tensor '" << name << "' has shape " << shape_str(t.shape()) << ", expected "
                                           << shape_str(shape) << " (" << t.describe() << ")");
}

}  // namespace ttt
