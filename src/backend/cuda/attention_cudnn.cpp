// cuDNN's fused flash attention as an optional path of swa_forward_bf16 (see attention_cudnn.h for the contract and
// the graph). Written against cuDNN's backend API (cudnn_graph.h: descriptors, attributes, heuristics, execution
// plans), the only part of cuDNN that ships here; the graph is the pattern cuDNN's fused attention engines match
// (matmul, scale, band masks built from GEN_INDEX, softmax with statistics, matmul), with the band as two masks:
// causal (row >= col) and the window's left edge (col + window > row, skipped when window >= N).
// Compiled with TTT_HAVE_CUDNN only where CMake found cuDNN; without it every entry point says so and returns.
#include "backend/cuda/attention_cudnn.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "core/error.h"

#ifdef TTT_HAVE_CUDNN
#include "backend/cuda/device.h"  // device_malloc

#include <cuda_runtime.h>
#include <cudnn_graph.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <vector>
#endif

namespace ttt::cuda {

namespace {
// swa_forward_bf16_set_cudnn; -1: not set, TTT_ATTN_CUDNN decides.
std::atomic<int> g_cudnn_setting{-1};
}  // namespace

bool swa_forward_bf16_uses_cudnn_setting() {
  static const bool from_env = [] {
    const char* e = std::getenv("TTT_ATTN_CUDNN");
    return e && std::string(e) == "1";
  }();
  const int set = g_cudnn_setting.load(std::memory_order_relaxed);
  return set >= 0 ? set == 1 : from_env;
}

int swa_forward_bf16_set_cudnn(int on) {
  TTT_CHECK(on == -1 || on == 0 || on == 1, "swa_forward_bf16_set_cudnn: expected -1, 0 or 1, got " << on);
  return g_cudnn_setting.exchange(on, std::memory_order_relaxed);
}

#ifndef TTT_HAVE_CUDNN

int cudnn_runtime_version(std::string* why) {
  if (why) *why = "built without cuDNN (CMake found no cudnn_graph.h / libcudnn, or TTT_WITH_CUDNN=OFF)";
  return 0;
}

bool swa_forward_cudnn(const AttentionShape&, const bf16*, int64_t, const bf16*, int64_t, const bf16*, int64_t, float*,
                       int64_t, float*, void*, std::string* why) {
  cudnn_runtime_version(why);
  return false;
}

#else  // TTT_HAVE_CUDNN

namespace {

// The cuDNN entry points this file uses, resolved from libcudnn.so.9 (the soname: whichever 9.x the loader finds,
// e.g. PyTorch's through LD_LIBRARY_PATH) at first use.
struct CudnnApi {
  decltype(&cudnnGetVersion) GetVersion = nullptr;
  decltype(&cudnnGetErrorString) GetErrorString = nullptr;
  decltype(&cudnnGetLastErrorString) GetLastErrorString = nullptr;
  decltype(&cudnnCreate) Create = nullptr;
  decltype(&cudnnSetStream) SetStream = nullptr;
  decltype(&cudnnBackendCreateDescriptor) CreateDescriptor = nullptr;
  decltype(&cudnnBackendDestroyDescriptor) DestroyDescriptor = nullptr;
  decltype(&cudnnBackendSetAttribute) SetAttribute = nullptr;
  decltype(&cudnnBackendGetAttribute) GetAttribute = nullptr;
  decltype(&cudnnBackendFinalize) Finalize = nullptr;
  decltype(&cudnnBackendExecute) Execute = nullptr;
  size_t version = 0;  // 0: not usable (error says why)
  std::string error;
};

// The backend API as used here (9.0 attribute set, cudnnGetLastErrorString) exists from cuDNN 9.0 on.
constexpr size_t kMinCudnnVersion = 90000;

const CudnnApi& cudnn() {
  static const CudnnApi api = [] {
    CudnnApi a;
    void* lib = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      a.error = std::string("cannot load libcudnn.so.9: ") + (e ? e : "unknown error");
      return a;
    }
    bool ok = true;
    const auto resolve = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn && ok) ok = false, a.error = std::string("libcudnn.so.9 has no ") + name;
    };
    resolve(a.GetVersion, "cudnnGetVersion");
    resolve(a.GetErrorString, "cudnnGetErrorString");
    resolve(a.GetLastErrorString, "cudnnGetLastErrorString");
    resolve(a.Create, "cudnnCreate");
    resolve(a.SetStream, "cudnnSetStream");
    resolve(a.CreateDescriptor, "cudnnBackendCreateDescriptor");
    resolve(a.DestroyDescriptor, "cudnnBackendDestroyDescriptor");
    resolve(a.SetAttribute, "cudnnBackendSetAttribute");
    resolve(a.GetAttribute, "cudnnBackendGetAttribute");
    resolve(a.Finalize, "cudnnBackendFinalize");
    resolve(a.Execute, "cudnnBackendExecute");
    if (!ok) return a;
    const size_t v = a.GetVersion();
    std::fprintf(stderr, "ttt: cuDNN %zu.%zu.%zu loaded (built against %d.%d.%d)\n", v / 10000, v / 100 % 100,
                 v % 100, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL);
    if (v < kMinCudnnVersion) {
      a.error = "cuDNN " + std::to_string(v) + " is older than 9.0";
      return a;
    }
    a.version = v;
    return a;
  }();
  return api;
}

// A failed cuDNN call inside a plan build: caught in swa_forward_cudnn, which then returns false.
struct CudnnFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(cudnnStatus_t status, const char* what) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  char detail[1024] = "";
  cudnn().GetLastErrorString(detail, sizeof detail);
  throw CudnnFailure(std::string(what) + ": " + cudnn().GetErrorString(status) +
                     (detail[0] ? std::string(" (") + detail + ")" : std::string()));
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw CudnnFailure(std::string(what) + ": " + cudaGetErrorString(e));
}

// Device memory through the backend's tracker (device_malloc: counted with the rest), failures as CudnnFailure.
void* allocate(size_t bytes, const char* what) {
  try {
    return device_malloc(std::max<size_t>(bytes, 16));
  } catch (const Error& e) {
    throw CudnnFailure(std::string(what) + ": " + e.what());
  }
}

// Fixed unique ids of the graph's real tensors (the variant pack names them); virtual ones count up from 100.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kScale, kNegInfCausal, kNegInfWindow, kWindow, kFirstVirtual = 100 };

using Dims = std::array<int64_t, 4>;

// The descriptors of one graph and its plan. They live as long as the process (a plan per shape and device),
// so they are never destroyed; a failed build destroys what it made.
class PlanBuilder {
 public:
  ~PlanBuilder() {
    if (!keep_)
      for (auto d : made_) cudnn().DestroyDescriptor(d);
  }
  void keep() { keep_ = true; }

  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type) {
    cudnnBackendDescriptor_t d = nullptr;
    check(cudnn().CreateDescriptor(type, &d), "cudnnBackendCreateDescriptor");
    made_.push_back(d);
    return d;
  }
  static void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                  int64_t count, const void* value, const char* what) {
    check(cudnn().SetAttribute(d, name, type, count, value), what);
  }
  static void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t v,
                       const char* what) {
    set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, what);
  }
  static void set_type(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnDataType_t t,
                       const char* what) {
    set(d, name, CUDNN_TYPE_DATA_TYPE, 1, &t, what);
  }

  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, const Dims& dims, const Dims& strides,
                                  bool is_virtual = false, bool by_value = false) {
    auto t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t alignment = 16;
    set_type(t, CUDNN_ATTR_TENSOR_DATA_TYPE, type, "tensor data type");
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data(), "tensor dimensions");
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data(), "tensor strides");
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment, "tensor alignment");
    if (is_virtual) {
      const bool yes = true;
      set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes, "tensor virtual");
    }
    if (by_value) {
      const bool yes = true;
      set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes, "tensor by value");
    }
    check(cudnn().Finalize(t), "finalize tensor");
    return t;
  }
  cudnnBackendDescriptor_t virt(cudnnDataType_t type, const Dims& dims, const Dims& strides) {
    return tensor(next_virtual_++, type, dims, strides, true);
  }
  // A host scalar passed by value at execution (the variant pack points at it).
  cudnnBackendDescriptor_t scalar(int64_t uid) {
    return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }

  // y = mode(x[, b][, t]) element-wise (broadcasting b, t), computed in `precision`; axis for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t precision, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y,
                 int64_t axis = -1) {
    auto pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set_type(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, precision, "pointwise precision");
    if (mode == CUDNN_POINTWISE_GEN_INDEX)
      set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    check(cudnn().Finalize(pw), "finalize pointwise");
    auto op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "pointwise op descriptor");
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, "pointwise x");
    if (b) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, "pointwise b");
    if (t) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, "pointwise t");
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, "pointwise y");
    check(cudnn().Finalize(op), "finalize pointwise op");
    ops_.push_back(op);
  }
  void reduction(cudnnReduceTensorOp_t reduce, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    auto r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce, "reduction operator");
    set_type(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT, "reduction precision");
    check(cudnn().Finalize(r), "finalize reduction");
    auto op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r, "reduction op descriptor");
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, "reduction x");
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, "reduction y");
    check(cudnn().Finalize(op), "finalize reduction op");
    ops_.push_back(op);
  }
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
    auto m = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    set_type(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT, "matmul precision");
    check(cudnn().Finalize(m), "finalize matmul");
    auto op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, "matmul a");
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, "matmul b");
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, "matmul c");
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, m, "matmul op descriptor");
    check(cudnn().Finalize(op), "finalize matmul op");
    ops_.push_back(op);
  }

  // The operation graph, heuristics (mode A) and the first engine configuration that finalizes as a plan.
  cudnnBackendDescriptor_t plan(cudnnHandle_t handle) {
    auto graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "graph handle");
    set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()), ops_.data(),
        "graph ops");
    check(cudnn().Finalize(graph), "finalize operation graph");
    auto heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics graph");
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    check(cudnn().Finalize(heur), "finalize heuristics");
    int64_t count = 0;
    check(cudnn().GetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
          "heuristics result count");
    if (count <= 0) throw CudnnFailure("cuDNN heuristics found no engine for the attention graph");
    std::vector<cudnnBackendDescriptor_t> configs;
    for (int64_t i = 0; i < count; ++i) configs.push_back(make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    int64_t got = 0;
    check(cudnn().GetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                               configs.data()),
          "heuristics results");
    std::string last = "no engine configuration";
    for (int64_t i = 0; i < got; ++i) {
      cudnnBackendDescriptor_t plan = nullptr;
      check(cudnn().CreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan), "create execution plan");
      cudnnStatus_t st = cudnn().SetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
      if (st == CUDNN_STATUS_SUCCESS)
        st = cudnn().SetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                  &configs[size_t(i)]);
      if (st == CUDNN_STATUS_SUCCESS) st = cudnn().Finalize(plan);
      if (st == CUDNN_STATUS_SUCCESS) {
        made_.push_back(plan);
        return plan;
      }
      char detail[1024] = "";
      cudnn().GetLastErrorString(detail, sizeof detail);
      last = std::string(cudnn().GetErrorString(st)) + (detail[0] ? std::string(" (") + detail + ")" : "");
      cudnn().DestroyDescriptor(plan);
    }
    throw CudnnFailure("no engine configuration of the attention graph finalizes: " + last);
  }

 private:
  std::vector<cudnnBackendDescriptor_t> made_, ops_;
  int64_t next_virtual_ = kFirstVirtual;
  bool keep_ = false;
};

// One shape's plan on one device, with the buffers it writes (o in bf16, the statistics) and its workspace.
struct CachedPlan {
  cudnnBackendDescriptor_t plan = nullptr;
  void* workspace = nullptr;
  bf16* o16 = nullptr;
  float* stats = nullptr;
  // The by-value scalars (the variant pack points at them).
  float scale = 0, neg_inf = 0, window = 0;
  int64_t uid_count = 0;  // the variant pack's first uid_count tensors (the window's two only where masked)
};

struct PlanKey {
  int device;
  int64_t S, N, heads, hd, window, ldq, ldk, ldv;
  auto tie() const { return std::tie(device, S, N, heads, hd, window, ldq, ldk, ldv); }
  bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

std::mutex g_mutex;                       // guards everything below and the handles' streams
std::map<int, cudnnHandle_t> g_handles;   // per device
std::map<PlanKey, CachedPlan> g_plans;    // built plans
std::map<PlanKey, std::string> g_failed;  // shapes cuDNN could not run, and why
bool g_warned = false;

cudnnHandle_t handle_for(int device) {
  auto it = g_handles.find(device);
  if (it != g_handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  check(cudnn().Create(&h), "cudnnCreate");
  g_handles[device] = h;
  return h;
}

CachedPlan build(const PlanKey& key, cudnnHandle_t handle) {
  const int64_t S = key.S, N = key.N, H = key.heads, hd = key.hd, D = H * hd;
  PlanBuilder g;
  // Our layouts as cuDNN's [batch = sequence, head, row, column] tensors (no copies): row r = seq*N + i of q holds
  // head h in columns [h*hd, (h+1)*hd); K enters transposed ([.., hd, N]) by swapping its last two strides.
  const auto q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, {S, H, N, hd}, {N * key.ldq, hd, key.ldq, 1});
  const auto kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, {S, H, hd, N}, {N * key.ldk, hd, 1, key.ldk});
  const auto v = g.tensor(kV, CUDNN_DATA_BFLOAT16, {S, H, N, hd}, {N * key.ldv, hd, key.ldv, 1});
  const auto o = g.tensor(kO, CUDNN_DATA_BFLOAT16, {S, H, N, hd}, {N * D, hd, D, 1});
  const auto stats = g.tensor(kStats, CUDNN_DATA_FLOAT, {S, H, N, 1}, {H * N, N, 1, 1});
  const Dims sd{S, H, N, N}, ss{H * N * N, N * N, N, 1};  // scores
  const Dims rd{S, H, N, 1}, rs{H * N, N, 1, 1};          // per-row statistics
  const auto fl = CUDNN_DATA_FLOAT, i32 = CUDNN_DATA_INT32, b8 = CUDNN_DATA_BOOLEAN;

  const auto scores = g.virt(fl, sd, ss);
  g.matmul(q, kt, scores);
  const auto scaled = g.virt(fl, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, fl, scores, g.scalar(kScale), nullptr, scaled);
  // Causal: keep row >= col.
  const auto row = g.virt(i32, sd, ss), col = g.virt(i32, sd, ss), causal = g.virt(b8, sd, ss);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, fl, scaled, nullptr, nullptr, row, 2);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, fl, scaled, nullptr, nullptr, col, 3);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, b8, row, col, nullptr, causal);
  auto masked = g.virt(fl, sd, ss);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, fl, scaled, g.scalar(kNegInfCausal), causal, masked);
  // The window's left edge: keep col + window > row, i.e. row - window < col (needless when window >= N).
  if (key.window < N) {
    const auto row2 = g.virt(i32, sd, ss), col2 = g.virt(i32, sd, ss), shifted = g.virt(fl, sd, ss),
               inside = g.virt(b8, sd, ss), banded = g.virt(fl, sd, ss);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, fl, masked, nullptr, nullptr, row2, 2);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, fl, masked, nullptr, nullptr, col2, 3);
    g.pointwise(CUDNN_POINTWISE_ADD, fl, col2, g.scalar(kWindow), nullptr, shifted);
    g.pointwise(CUDNN_POINTWISE_CMP_GT, b8, shifted, row2, nullptr, inside);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, fl, masked, g.scalar(kNegInfWindow), inside, banded);
    masked = banded;
  }
  // Softmax with its statistics: lse = max + log(sum exp(s - max)), natural log, as our backward expects.
  const auto mx = g.virt(fl, rd, rs), centred = g.virt(fl, sd, ss), e = g.virt(fl, sd, ss), sum = g.virt(fl, rd, rs),
             log_sum = g.virt(fl, rd, rs), p = g.virt(CUDNN_DATA_BFLOAT16, sd, ss);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, mx);
  g.pointwise(CUDNN_POINTWISE_SUB, fl, masked, mx, nullptr, centred);
  g.pointwise(CUDNN_POINTWISE_EXP, fl, centred, nullptr, nullptr, e);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
  g.pointwise(CUDNN_POINTWISE_LOG, fl, sum, nullptr, nullptr, log_sum);
  g.pointwise(CUDNN_POINTWISE_ADD, fl, mx, log_sum, nullptr, stats);
  g.pointwise(CUDNN_POINTWISE_DIV, fl, e, sum, nullptr, p);  // P in bf16: the second product's operand type
  g.matmul(p, v, o);

  CachedPlan c;
  c.plan = g.plan(handle);
  int64_t workspace = 0, n = 0;
  check(cudnn().GetAttribute(c.plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &workspace),
        "plan workspace size");
  c.workspace = allocate(size_t(workspace), "cuDNN workspace");
  c.o16 = static_cast<bf16*>(allocate(size_t(S * N * D) * sizeof(bf16), "cuDNN o (bf16)"));
  c.stats = static_cast<float*>(allocate(size_t(S * N * H) * sizeof(float), "cuDNN statistics"));
  c.scale = float(1.0 / std::sqrt(double(hd)));
  // cuDNN before 9.10 expects the lowest float, not -inf, as the masked score (as cuDNN's frontend passes it).
  c.neg_inf = cudnn().version < 91000 ? std::numeric_limits<float>::lowest() : -std::numeric_limits<float>::infinity();
  c.window = float(key.window);
  c.uid_count = key.window < N ? 9 : 7;
  g.keep();
  return c;
}

void execute(const CachedPlan& c, cudnnHandle_t handle, const bf16* q, const bf16* k, const bf16* v,
             cudaStream_t stream) {
  check(cudnn().SetStream(handle, stream), "cudnnSetStream");
  // The window's two scalars last: without its mask (window >= N) they are not in the graph.
  int64_t uids[] = {kQ, kK, kV, kO, kStats, kScale, kNegInfCausal, kNegInfWindow, kWindow};
  void* pointers[] = {const_cast<bf16*>(q), const_cast<bf16*>(k), const_cast<bf16*>(v), c.o16, c.stats,
                      const_cast<float*>(&c.scale), const_cast<float*>(&c.neg_inf), const_cast<float*>(&c.neg_inf),
                      const_cast<float*>(&c.window)};
  static_assert(sizeof(uids) / sizeof(uids[0]) == 9 && sizeof(pointers) / sizeof(pointers[0]) == 9);
  cudnnBackendDescriptor_t pack = nullptr;
  check(cudnn().CreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack), "create variant pack");
  struct Destroy {
    cudnnBackendDescriptor_t d;
    ~Destroy() { cudnn().DestroyDescriptor(d); }
  } destroy{pack};
  check(cudnn().SetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, c.uid_count, uids),
        "variant pack uids");
  check(cudnn().SetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, c.uid_count, pointers),
        "variant pack pointers");
  void* workspace = c.workspace;
  check(cudnn().SetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace),
        "variant pack workspace");
  check(cudnn().Finalize(pack), "finalize variant pack");
  check(cudnn().Execute(handle, c.plan, pack), "cudnnBackendExecute");
}

}  // namespace

int cudnn_runtime_version(std::string* why) {
  const CudnnApi& api = cudnn();
  if (api.version == 0 && why) *why = api.error;
  return int(api.version);
}

bool swa_forward_cudnn(const AttentionShape& s, const bf16* q, int64_t ldq, const bf16* k, int64_t ldk, const bf16* v,
                       int64_t ldv, float* o, int64_t ldo, float* lse, void* stream, std::string* why) {
  const int version = cudnn_runtime_version(why);
  if (version == 0) return false;
  // Versions and shapes cuDNN's own frontend refuses for this graph (its sdpa_support_surface.h).
  if (version == 91000 || version == 91001) {
    if (why) *why = "cuDNN 9.10.0 and 9.10.1 have known bugs in the bf16 attention forward";
    return false;
  }
  if (s.N == 1 && version <= 90900) {
    if (why) *why = "cuDNN 9.9 and older do not run one-query (N = 1) attention with a causal mask";
    return false;
  }
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = "no CUDA device";
    return false;
  }
  const PlanKey key{device, s.S, s.N, s.heads, s.hd, s.window, ldq, ldk, ldv};
  const auto st = static_cast<cudaStream_t>(stream);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (auto failed = g_failed.find(key); failed != g_failed.end()) {
    if (why) *why = failed->second;
    return false;
  }
  auto it = g_plans.find(key);
  try {
    if (it == g_plans.end()) {
      // Building allocates device memory: not while the stream is being captured into a CUDA graph.
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      check_cuda(cudaStreamIsCapturing(st, &capture), "cudaStreamIsCapturing");
      if (capture != cudaStreamCaptureStatusNone) {
        if (why) *why = "the cuDNN plan for this shape would have to be built during stream capture";
        return false;
      }
      it = g_plans.emplace(key, build(key, handle_for(device))).first;
    }
    execute(it->second, handle_for(device), q, k, v, st);
  } catch (const CudnnFailure& e) {
    const std::string reason = std::string("cuDNN attention (S ") + std::to_string(s.S) + ", N " +
                               std::to_string(s.N) + ", heads " + std::to_string(s.heads) + ", hd " +
                               std::to_string(s.hd) + ", window " + std::to_string(s.window) + "): " + e.what();
    g_failed[key] = reason;
    if (!g_warned) {
      g_warned = true;
      std::fprintf(stderr, "ttt: warning: %s; running our attention kernels instead\n", reason.c_str());
    }
    if (why) *why = reason;
    return false;
  }
  cudnn_attention_outputs(s, it->second.o16, it->second.stats, o, ldo, lse, stream);
  return true;
}

#endif  // TTT_HAVE_CUDNN

}  // namespace ttt::cuda
