// CUDA kernels of the conv ops (cpp/src/ops/conv.cpp defines the ops and their CPU kernels): cuDNN's
// legacy convolution API, with the algorithm its heuristics rank fastest (deterministic ones first)
// picked once per shape. Built without cuDNN, the conv ops get no CUDA kernels.
#include "common.cuh"

#ifdef KILN_WITH_CUDNN
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cudnn.cuh"
#include "kiln/cuda.h"
#include "ops/conv_inputs.h"
#endif

namespace kiln::cuda {

#ifdef KILN_WITH_CUDNN
namespace {

enum class Pass { forward, input_grad, weight_grad };

// The most scratch memory an algorithm may ask for: the pool keeps what it grows to, so a greedy
// algorithm would hold memory for the rest of the program.
constexpr size_t kMaxWorkspace = size_t(1) << 30;

// A convolution from its conv side (x its input, y its output, w (K, C/groups, kernel...)), 1-D as
// 2-D with H = 1. cuDNN pads both ends alike. Where that does not give y's size (pad_end unlike
// pad_begin, or a gy cut short under a transposed convolution's output_padding), the dim is padded or
// cropped explicitly instead: cuDNN then sees x in a zero-padded buffer of len positions, x at shift.
struct ConvGeom {
  int nd = 2;  // spatial dims of the descriptors
  int64_t n = 0, c = 0, k = 0, groups = 1;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, ker[3] = {1, 1, 1}, stride[3] = {1, 1, 1}, dil[3] = {1, 1, 1};
  int64_t pad[3] = {0, 0, 0}, len[3] = {1, 1, 1}, shift[3] = {0, 0, 0};
  bool explicit_pad = false;
};

ConvGeom make_geom(const Shape& x, const Shape& w, const Shape& y, const Attrs& a, const char* op) {
  const int sp = x.rank() - 2;
  if (sp < 1 || sp > 3 || w.rank() != x.rank() || y.rank() != x.rank())
    throw Error(std::string(op) + ": expects input, weight and output of one rank 3-5, got " + x.str() + ", " +
                w.str() + " and " + y.str());
  auto ints = [&](const char* name) -> const std::vector<int64_t>& {
    const auto& v = a.ints(name);
    if (static_cast<int>(v.size()) != sp)
      throw Error(std::string(op) + ": " + name + " needs " + std::to_string(sp) + " values, got " +
                  std::to_string(v.size()));
    return v;
  };
  const auto &st = ints("stride"), &pb = ints("pad_begin"), &dl = ints("dilation");
  ints("pad_end");  // only checked: y's size says what cuDNN needs
  ConvGeom g;
  g.nd = sp < 2 ? 2 : sp;
  g.n = x[0], g.c = x[1], g.k = w[0], g.groups = a.i("groups", 1);
  for (int i = 0; i < sp; ++i) {
    const int j = g.nd - sp + i;
    g.in[j] = g.len[j] = x[2 + i];
    g.out[j] = y[2 + i];
    g.ker[j] = w[2 + i];
    g.stride[j] = st[i];
    g.dil[j] = dl[i];
    const int64_t span = dl[i] * (w[2 + i] - 1) + 1, padded = g.in[j] + 2 * pb[i];
    if (padded >= span && (padded - span) / st[i] + 1 == g.out[j]) {
      g.pad[j] = pb[i];
    } else {  // the outputs read the same positions from the buffer as they would from x padded by pad_begin
      g.len[j] = (g.out[j] - 1) * st[i] + span;
      g.shift[j] = pb[i];
      g.explicit_pad = true;
    }
  }
  return g;
}

struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  int algo = 0;
  size_t workspace = 0;
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {  // runs only for a plan that failed to be made: the cache is never destroyed
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
  }
};

// The first algorithm of the heuristics' ranking that runs within kMaxWorkspace, its math type set on
// the descriptor. Deterministic ones first (some backward algorithms add with atomics: a function
// called twice would not give the same bits, as it does on the CPU), then any. The weight gradient
// takes the fastest outright: it feeds optimizer steps, never a function's repeatable forward output. Without TF32 only
// FMA math keeps float32 exact (cuDNN's default math may use TF32 on Ampere and newer): entries ranked for FMA math
// first, and last any algorithm forced to FMA math.
template <class Perf, class SizeFn>
void choose(Plan& p, const Perf* perf, int count, bool fma_only, bool deterministic_first, SizeFn workspace_of,
            const char* op) {
  for (int round = deterministic_first ? 0 : 1; round < 3; ++round)
    for (int i = 0; i < count; ++i) {
      if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
      if (round == 0 && perf[i].determinism != CUDNN_DETERMINISTIC) continue;
      if (round < 2 && fma_only && perf[i].mathType != CUDNN_FMA_MATH) continue;
      if (round == 2 && !fma_only) break;  // nothing left to try
      if (cudnnSetConvolutionMathType(p.conv, fma_only ? CUDNN_FMA_MATH : perf[i].mathType) != CUDNN_STATUS_SUCCESS)
        continue;
      size_t bytes = 0;
      if (workspace_of(perf[i].algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > kMaxWorkspace) continue;
      p.algo = static_cast<int>(perf[i].algo);
      p.workspace = bytes;
      return;
    }
  throw Error(std::string(op) + ": cuDNN has no algorithm for this convolution within 1 GiB of workspace");
}

// The descriptors and algorithm of a shape, made once: heuristics cost tens of microseconds a call.
const Plan& plan_for(const ConvGeom& g, Pass pass, DType dt, const char* op) {
  const bool fma_only = dt == DType::float32 && !tf32_allowed();
  std::vector<int64_t> key{
      static_cast<int64_t>(pass), static_cast<int64_t>(dt), fma_only, g.nd, g.n, g.c, g.k, g.groups};
  for (int j = 0; j < g.nd; ++j) key.insert(key.end(), {g.len[j], g.out[j], g.ker[j], g.stride[j], g.pad[j], g.dil[j]});
  static std::mutex mu;
  static auto* plans = new std::map<std::vector<int64_t>, std::unique_ptr<Plan>>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans->find(key);
  if (it != plans->end()) return *it->second;

  auto p = std::make_unique<Plan>();
  const cudnnDataType_t t = dnn_type(dt, op);
  check_dnn(cudnnCreateTensorDescriptor(&p->x), op, "cudnnCreateTensorDescriptor");
  check_dnn(cudnnCreateTensorDescriptor(&p->y), op, "cudnnCreateTensorDescriptor");
  check_dnn(cudnnCreateFilterDescriptor(&p->w), op, "cudnnCreateFilterDescriptor");
  check_dnn(cudnnCreateConvolutionDescriptor(&p->conv), op, "cudnnCreateConvolutionDescriptor");
  set_tensor(p->x, t, g.n, g.c, g.len, g.nd, op);
  set_tensor(p->y, t, g.n, g.k, g.out, g.nd, op);
  int wdims[5] = {to_int(g.k, op), to_int(g.groups > 0 ? g.c / g.groups : 0, op)}, pad[3], stride[3], dil[3];
  for (int j = 0; j < g.nd; ++j) {
    wdims[2 + j] = to_int(g.ker[j], op);
    pad[j] = to_int(g.pad[j], op), stride[j] = to_int(g.stride[j], op), dil[j] = to_int(g.dil[j], op);
  }
  check_dnn(cudnnSetFilterNdDescriptor(p->w, t, CUDNN_TENSOR_NCHW, g.nd + 2, wdims), op, "cudnnSetFilterNdDescriptor");
  check_dnn(cudnnSetConvolutionNdDescriptor(p->conv, g.nd, pad, stride, dil, CUDNN_CROSS_CORRELATION, t), op,
            "cudnnSetConvolutionNdDescriptor");
  check_dnn(cudnnSetConvolutionGroupCount(p->conv, to_int(g.groups, op)), op, "cudnnSetConvolutionGroupCount");
  // the heuristics rank algorithms for the descriptor's math type
  check_dnn(cudnnSetConvolutionMathType(p->conv, fma_only ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH), op,
            "cudnnSetConvolutionMathType");

  cudnnHandle_t h = handle(op);
  int count = 0;
  if (pass == Pass::forward) {
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    check_dnn(cudnnGetConvolutionForwardAlgorithm_v7(h, p->x, p->w, p->conv, p->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                     &count, perf),
              op, "cudnnGetConvolutionForwardAlgorithm_v7");
    auto bytes_of = [&](cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
      return cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->w, p->conv, p->y, algo, bytes);
    };
    choose(*p, perf, count, fma_only, pass != Pass::weight_grad, bytes_of, op);
  } else if (pass == Pass::input_grad) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    check_dnn(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p->w, p->y, p->conv, p->x,
                                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf),
              op, "cudnnGetConvolutionBackwardDataAlgorithm_v7");
    auto bytes_of = [&](cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
      return cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->w, p->y, p->conv, p->x, algo, bytes);
    };
    choose(*p, perf, count, fma_only, pass != Pass::weight_grad, bytes_of, op);
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    check_dnn(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->x, p->y, p->conv, p->w,
                                                            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf),
              op, "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
    auto bytes_of = [&](cudnnConvolutionBwdFilterAlgo_t algo, size_t* bytes) {
      return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->x, p->y, p->conv, p->w, algo, bytes);
    };
    choose(*p, perf, count, fma_only, pass != Pass::weight_grad, bytes_of, op);
  }
  return *plans->emplace(std::move(key), std::move(p)).first->second;
}

// dst[plane, i] = src[plane, i - shift] inside src, else 0, over 3 spatial dims: x into its
// explicitly padded buffer (shift = the geometry's), or the buffer's gradient back (shift negated).
struct Box {
  int64_t src[3], dst[3], shift[3];
};

template <class T>
__global__ void shift_copy_kernel(int64_t n, const T* __restrict__ src, T* __restrict__ dst, Box b) {
  KILN_GRID_LOOP(i, n) {
    int64_t c[3], r = i;
    for (int d = 2; d >= 0; --d) c[d] = r % b.dst[d], r /= b.dst[d];
    bool inside = true;
    for (int d = 0; d < 3; ++d) {
      const int64_t q = c[d] - b.shift[d];
      inside &= q >= 0 && q < b.src[d];
      r = r * b.src[d] + q;
    }
    dst[i] = inside ? src[r] : T(0);
  }
}

// to_buffer: x (the conv's input) into the buffer; otherwise the buffer back into x's shape.
void shift_copy(const ConvGeom& g, DType dt, const void* src, void* dst, bool to_buffer, const char* op) {
  Box b{};
  int64_t n = g.n * g.c;
  for (int d = 0; d < 3; ++d) {
    const int j = d - (3 - g.nd);  // the descriptors' dim, or a leading size-1 dim
    const int64_t in = j >= 0 ? g.in[j] : 1, len = j >= 0 ? g.len[j] : 1, shift = j >= 0 ? g.shift[j] : 0;
    b.src[d] = to_buffer ? in : len;
    b.dst[d] = to_buffer ? len : in;
    b.shift[d] = to_buffer ? shift : -shift;
    n *= b.dst[d];
  }
  if (n == 0) return;
  KILN_DISPATCH_FLOAT(dt, op, {
    shift_copy_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(n, static_cast<const scalar_t*>(src),
                                                                static_cast<scalar_t*>(dst), b);
  });
  check_launch(op);
}

// forward: (x, w) -> y; input_grad: (gy, w) -> dx; weight_grad: (gy, x) -> dw.
void run(Pass pass, const ConvGeom& g, DType dt, const char* op, const void* a, const void* b, void* out) {
  const Plan& p = plan_for(g, pass, dt, op);
  cudnnHandle_t h = handle(op);
  const float one_f = 1, zero_f = 0;
  const double one_d = 1, zero_d = 0;
  const void* one = dt == DType::float64 ? static_cast<const void*>(&one_d) : &one_f;
  const void* zero = dt == DType::float64 ? static_cast<const void*>(&zero_d) : &zero_f;
  int64_t buffer_elems = g.n * g.c;
  for (int j = 0; j < g.nd; ++j) buffer_elems *= g.len[j];
  std::unique_ptr<Scratch> buffer;
  if (g.explicit_pad) buffer = std::make_unique<Scratch>(static_cast<size_t>(buffer_elems) * dtype_size(dt));
  Scratch ws(p.workspace);
  if (pass == Pass::input_grad) {
    void* dx = g.explicit_pad ? buffer->as<void>() : out;
    check_dnn(
        cudnnConvolutionBackwardData(h, one, p.w, b, p.y, a, p.conv, static_cast<cudnnConvolutionBwdDataAlgo_t>(p.algo),
                                     ws.as<void>(), p.workspace, zero, p.x, dx),
        op, "cudnnConvolutionBackwardData");
    if (g.explicit_pad) shift_copy(g, dt, dx, out, false, op);
    return;
  }
  const void* x = pass == Pass::forward ? a : b;
  if (g.explicit_pad) {
    shift_copy(g, dt, x, buffer->as<void>(), true, op);
    x = buffer->as<void>();
  }
  if (pass == Pass::forward)
    check_dnn(cudnnConvolutionForward(h, one, p.x, x, p.w, b, p.conv, static_cast<cudnnConvolutionFwdAlgo_t>(p.algo),
                                      ws.as<void>(), p.workspace, zero, p.y, out),
              op, "cudnnConvolutionForward");
  else
    check_dnn(cudnnConvolutionBackwardFilter(h, one, p.x, x, p.y, a, p.conv,
                                             static_cast<cudnnConvolutionBwdFilterAlgo_t>(p.algo), ws.as<void>(),
                                             p.workspace, zero, p.w, out),
              op, "cudnnConvolutionBackwardFilter");
}

// A batch norm folded into the convolution by the compiler (attribute bn_eps): its statistics.
template <class T>
struct FoldedBn {
  const T *gamma = nullptr, *beta = nullptr, *mean = nullptr, *var = nullptr;
  double eps = 0;
};

// y + bias[channel], then a folded batch norm, (y - mean) * gamma / sqrt(var + eps) + beta, then max(0, y) as the
// CPU writes it (y > 0 ? y : 0: a NaN becomes 0).
template <class T, class Idx>
__global__ void epilogue_kernel(int64_t n, int64_t P, int64_t K, T* __restrict__ y, const T* __restrict__ bias,
                                FoldedBn<T> bn, const T* __restrict__ residual, int64_t residual_sample, bool relu) {
  KILN_GRID_LOOP(i, n) {
    const Idx k = (static_cast<Idx>(i) / static_cast<Idx>(P)) % static_cast<Idx>(K);
    T v = y[i];
    if (bias) v += bias[k];
    if (bn.gamma) v = (v - bn.mean[k]) * T(double(bn.gamma[k]) / sqrt(double(bn.var[k]) + bn.eps)) + bn.beta[k];
    if (residual) v += residual[residual_sample ? static_cast<Idx>(i) % static_cast<Idx>(residual_sample) : i];
    if (relu) v = v > T(0) ? v : T(0);
    y[i] = v;
  }
}

// The epilogue of conv (its bias, and what the compiler fused: ops/conv_inputs.h) and of conv_transpose
// (bias only).
void epilogue(const KernelContext& c, Tensor& y, const char* op) {
  const conv::ConvInputs at(c.n_in, c.attrs);
  const bool relu = c.attrs.i("relu", 0) != 0;
  const int64_t n = y.numel();
  if ((at.bias < 0 && at.bn < 0 && at.residual < 0 && !relu) || n == 0) return;
  const int64_t K = y.shape()[1], P = n / (y.shape()[0] * K);
  KILN_DISPATCH_FLOAT(y.dtype(), op, {
    const scalar_t* b = at.bias >= 0 ? c.input(at.bias).data<scalar_t>() : nullptr;
    const scalar_t* r = at.residual >= 0 ? c.input(at.residual).data<scalar_t>() : nullptr;
    // one sample's residual added to every sample: a batch of 1 (see ops/conv.cpp)
    const int64_t sample = r && c.input(at.residual).shape()[0] == 1 && y.shape()[0] > 1 ? K * P : 0;
    FoldedBn<scalar_t> f;
    if (at.bn >= 0)
      f = {c.input(at.bn).data<scalar_t>(), c.input(at.bn + 1).data<scalar_t>(), c.input(at.bn + 2).data<scalar_t>(),
           c.input(at.bn + 3).data<scalar_t>(), c.attrs.f("bn_eps")};
    if (n <= INT_MAX)  // 32-bit division where it will do: several times cheaper than 64-bit
      epilogue_kernel<scalar_t, int32_t>
          <<<blocks_for(n), kThreads, 0, stream()>>>(n, P, K, y.data<scalar_t>(), b, f, r, sample, relu);
    else
      epilogue_kernel<scalar_t, int64_t>
          <<<blocks_for(n), kThreads, 0, stream()>>>(n, P, K, y.data<scalar_t>(), b, f, r, sample, relu);
  });
  check_launch(op);
}

void zero_fill(Tensor& t, const char* op) { check(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream()), op); }

// conv(x, w[, b]) -> y, with the ReLU and batch norm the compiler may have fused.
void conv(const KernelContext& c) {
  const Tensor &x = c.input(0), &w = c.input(1);
  Tensor& y = c.output(0);
  if (y.numel() == 0) return;
  const ConvGeom g = make_geom(x.shape(), w.shape(), y.shape(), c.attrs, "conv");
  if (x.numel() == 0 || w.numel() == 0)  // no input channels: a sum of nothing
    zero_fill(y, "conv");
  else
    run(Pass::forward, g, x.dtype(), "conv", x.raw(), w.raw(), y.raw());
  epilogue(c, y, "conv");
}

// conv_input_grad(gy, w, x_ref) -> dx
void conv_input_grad(const KernelContext& c) {
  const Tensor &gy = c.input(0), &w = c.input(1);
  Tensor& dx = c.output(0);
  if (dx.numel() == 0) return;
  const ConvGeom g = make_geom(dx.shape(), w.shape(), gy.shape(), c.attrs, "conv_input_grad");
  if (gy.numel() == 0 || w.numel() == 0)
    zero_fill(dx, "conv_input_grad");
  else
    run(Pass::input_grad, g, gy.dtype(), "conv_input_grad", gy.raw(), w.raw(), dx.raw());
}

// conv_transpose(x, w[, b]) -> y: the input gradient of the convolution of y (output_padding is in
// y's shape), plus the bias.
void conv_transpose(const KernelContext& c) {
  const Tensor &x = c.input(0), &w = c.input(1);
  Tensor& y = c.output(0);
  if (y.numel() == 0) return;
  const ConvGeom g = make_geom(y.shape(), w.shape(), x.shape(), c.attrs, "conv_transpose");
  if (x.numel() == 0 || w.numel() == 0)
    zero_fill(y, "conv_transpose");
  else
    run(Pass::input_grad, g, x.dtype(), "conv_transpose", x.raw(), w.raw(), y.raw());
  epilogue(c, y, "conv_transpose");
}

// conv_weight_grad(gy, x, w_ref) -> dw
void conv_weight_grad(const KernelContext& c) {
  const Tensor &gy = c.input(0), &x = c.input(1);
  Tensor& dw = c.output(0);
  if (dw.numel() == 0) return;
  const ConvGeom g = make_geom(x.shape(), dw.shape(), gy.shape(), c.attrs, "conv_weight_grad");
  if (gy.numel() == 0 || x.numel() == 0)
    zero_fill(dw, "conv_weight_grad");
  else
    run(Pass::weight_grad, g, gy.dtype(), "conv_weight_grad", gy.raw(), x.raw(), dw.raw());
}

}  // namespace
#endif  // KILN_WITH_CUDNN

void register_conv_kernels(OpRegistry& r) {
#ifdef KILN_WITH_CUDNN
  r.set_cuda_kernel("conv", conv);
  r.set_cuda_kernel("conv_input_grad", conv_input_grad);
  r.set_cuda_kernel("conv_weight_grad", conv_weight_grad);
  r.set_cuda_kernel("conv_transpose", conv_transpose);
#endif
}

}  // namespace kiln::cuda
