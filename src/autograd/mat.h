// Dense row-major matrix of T (float or double): the value type of the autograd tape.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace ttt::ag {

template <class T>
struct Mat {
  int64_t rows = 0, cols = 0;
  std::vector<T> data;

  Mat() = default;
  Mat(int64_t r, int64_t c) : rows(r), cols(c), data(size_t(r * c), T(0)) {}
  Mat(int64_t r, int64_t c, T fill) : rows(r), cols(c), data(size_t(r * c), fill) {}
  static Mat scalar(T v) { return Mat(1, 1, v); }

  int64_t size() const { return rows * cols; }
  bool empty() const { return data.empty(); }
  T& operator()(int64_t r, int64_t c) { return data[size_t(r * cols + c)]; }
  const T& operator()(int64_t r, int64_t c) const { return data[size_t(r * cols + c)]; }
  T* ptr() { return data.data(); }
  const T* ptr() const { return data.data(); }
  T* row(int64_t r) { return data.data() + r * cols; }
  const T* row(int64_t r) const { return data.data() + r * cols; }
  std::string shape() const { return "[" + std::to_string(rows) + "," + std::to_string(cols) + "]"; }
  bool same_shape(const Mat& o) const { return rows == o.rows && cols == o.cols; }
};

// Copies between Tensors (any dtype, contiguous) and Mats.
template <class T>
Mat<T> mat_from(const Tensor& t, int64_t rows, int64_t cols, int64_t offset_elems = 0) {
  Tensor c = t.contiguous();
  TTT_CHECK(offset_elems + rows * cols <= c.numel(), "mat_from: range out of bounds of " << c.describe());
  Mat<T> m(rows, cols);
  if (c.dtype() == dtype_of<T>::value) {
    const T* p = c.data<T>() + offset_elems;
    std::copy(p, p + rows * cols, m.data.begin());
  } else {
    for (int64_t i = 0; i < rows * cols; ++i) m.data[size_t(i)] = T(c.get(offset_elems + i));
  }
  return m;
}

}  // namespace ttt::ag
