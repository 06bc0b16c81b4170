// A small reverse-mode autodiff tape over dense matrices.
//
// Every op records its output value and a backward closure. backward() walks the
// nodes in reverse creation order, so the tape is its own topological order. The
// TTT engine records one program step (apply/update of one chunk) at a time and
// replays it during the backward pass, so tapes stay small (see docs/ARCHITECTURE.md).
#pragma once
#include <deque>
#include <functional>
#include <initializer_list>
#include <vector>

#include "autograd/mat.h"

namespace ttt::ag {

struct Var {
  int32_t id = -1;
  bool valid() const { return id >= 0; }
};

template <class T>
class Tape {
 public:
  // The backward closure receives the tape and the gradient of the node's output.
  using BackwardFn = std::function<void(Tape&, const Mat<T>&)>;

  Var leaf(Mat<T> value, bool requires_grad = false) {
    nodes_.push_back(Node{std::move(value), Mat<T>(), requires_grad, nullptr});
    return Var{int32_t(nodes_.size() - 1)};
  }
  Var constant(Mat<T> value) { return leaf(std::move(value), false); }

  // Records a computed node; it requires grad when any input does.
  Var make(Mat<T> value, std::initializer_list<Var> inputs, BackwardFn fn) {
    bool rg = false;
    for (Var v : inputs) rg = rg || node(v).requires_grad;
    nodes_.push_back(Node{std::move(value), Mat<T>(), rg, rg ? std::move(fn) : nullptr});
    return Var{int32_t(nodes_.size() - 1)};
  }
  Var make(Mat<T> value, const std::vector<Var>& inputs, BackwardFn fn) {
    bool rg = false;
    for (Var v : inputs) rg = rg || node(v).requires_grad;
    nodes_.push_back(Node{std::move(value), Mat<T>(), rg, rg ? std::move(fn) : nullptr});
    return Var{int32_t(nodes_.size() - 1)};
  }

  const Mat<T>& val(Var v) const { return node(v).value; }
  bool requires_grad(Var v) const { return node(v).requires_grad; }
  bool has_grad(Var v) const { return !node(v).grad.empty(); }
  // Gradient buffer of v, allocated as zeros on first use.
  Mat<T>& grad(Var v) {
    Node& n = node(v);
    if (n.grad.empty()) n.grad = Mat<T>(n.value.rows, n.value.cols);
    return n.grad;
  }
  // Adds g into v's gradient when v requires grad.
  void accumulate(Var v, const Mat<T>& g) {
    if (!requires_grad(v)) return;
    Mat<T>& dst = grad(v);
    TTT_CHECK(dst.same_shape(g), "gradient shape " << g.shape() << " does not match value " << dst.shape());
    for (size_t i = 0; i < g.data.size(); ++i) dst.data[i] += g.data[i];
  }
  // Runs every recorded backward closure in reverse order. Seed gradients first with grad(v).
  void backward() {
    for (int64_t i = int64_t(nodes_.size()) - 1; i >= 0; --i) {
      Node& n = nodes_[size_t(i)];
      if (!n.backward || n.grad.empty()) continue;
      n.backward(*this, n.grad);
    }
  }
  size_t size() const { return nodes_.size(); }
  void clear() { nodes_.clear(); }

 private:
  struct Node {
    Mat<T> value;
    Mat<T> grad;
    bool requires_grad;
    BackwardFn backward;
  };
  Node& node(Var v) {
    TTT_CHECK(v.id >= 0 && size_t(v.id) < nodes_.size(), "invalid tape variable " << v.id);
    return nodes_[size_t(v.id)];
  }
  const Node& node(Var v) const {
    TTT_CHECK(v.id >= 0 && size_t(v.id) < nodes_.size(), "invalid tape variable " << v.id);
    return nodes_[size_t(v.id)];
  }
  std::deque<Node> nodes_;  // deque: references stay valid while recording
};

}  // namespace ttt::ag
