// Tensor: shape, strides, element type and device tag over shared storage.
// This is the storage/interchange type (parameters, safetensors I/O, operator inputs).
// Compute inside the engine happens on typed dense matrices (autograd/mat.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace ttt {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
// Element count and byte size of a shape; a product that overflows 64 bits (a crafted file's shape)
// throws instead of wrapping. shape_nbytes also refuses negative dimensions.
int64_t shape_numel(const Shape& s);
size_t shape_nbytes(const Shape& s, DType dtype);
// memcpy that accepts the null storage of a tensor without elements (memcpy(nullptr, _, 0) is undefined).
void copy_bytes(void* dst, const void* src, size_t n);

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t i) const;
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  // "F32[4,16,64]" for messages.
  std::string describe() const;

  // Raw pointer to the first element; T must match the dtype (checked).
  template <class T> T* data() {
    TTT_CHECK(dtype_of<T>::value == dtype_, "tensor is " << describe() << ", accessed as " << dtype_name(dtype_of<T>::value));
    return reinterpret_cast<T*>(raw()) ;
  }
  template <class T> const T* data() const {
    TTT_CHECK(dtype_of<T>::value == dtype_, "tensor is " << describe() << ", accessed as " << dtype_name(dtype_of<T>::value));
    return reinterpret_cast<const T*>(raw());
  }
  void* raw();
  const void* raw() const;

  // Element read/write as double regardless of dtype (contiguous index); slow, for tests and I/O.
  double get(int64_t flat) const;
  void set(int64_t flat, double v);

  Tensor contiguous() const;
  Tensor to(DType dtype) const;     // copy with conversion (always a new tensor)
  Tensor clone() const;
  Tensor reshape(const Shape& shape) const;  // view of a contiguous tensor; one dim may be -1
  // Copy of the index range [start, end) along dimension `dim`.
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;

  // Element-wise checks used by tests and input validation.
  bool all_finite() const;

 private:
  Shape shape_, strides_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  std::shared_ptr<std::vector<std::byte>> storage_;
  int64_t offset_ = 0;  // in elements
};

// Throws unless `t` has exactly `shape` (names the tensor in the message).
void check_shape(const Tensor& t, const Shape& shape, const std::string& name);

}  // namespace ttt
