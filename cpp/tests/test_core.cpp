// The C++ library on its own: tensors, the registry, graphs, autodiff and compiled functions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "kiln/kiln.h"

using namespace kiln;

namespace {

Tensor make(const Shape& shape, std::vector<float> values) {
  Tensor t = Tensor::empty(shape, DType::float32);
  EXPECT_EQ(static_cast<size_t>(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

}  // namespace

TEST(Tensor, ShapesStridesAndAlignment) {
  Tensor t = Tensor::zeros(Shape{2, 3, 4}, DType::float64);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  EXPECT_TRUE(t.is_contiguous());
  Tensor v = t.view(Shape{6, 4});
  EXPECT_EQ(v.raw(), t.raw());
  EXPECT_THROW(t.view(Shape{5, 5}), Error);
}

TEST(Tensor, StridedCopyFromExternalMemory) {
  float data[6] = {0, 1, 2, 3, 4, 5};  // a 2x3 array read as its 3x2 transpose
  Shape strides{1, 3};
  Tensor t = Tensor::from_blob(data, Shape{3, 2}, DType::float32, nullptr, &strides);
  EXPECT_FALSE(t.is_contiguous());
  Tensor c = t.contiguous();
  std::vector<float> want = {0, 3, 1, 4, 2, 5};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(c.data<float>()[i], want[i]);
}

TEST(DType, PromotionFollowsNumpy) {
  EXPECT_EQ(promote(DType::float32, DType::float64), DType::float64);
  EXPECT_EQ(promote(DType::int32, DType::float32), DType::float64);
  EXPECT_EQ(promote(DType::uint8, DType::float32), DType::float32);
  EXPECT_EQ(promote(DType::bool_, DType::int32), DType::int32);
  EXPECT_EQ(promote(DType::uint8, DType::int64), DType::int64);
  EXPECT_THROW(dtype_from_name("float8"), Error);
}

TEST(Registry, EveryOpHasAGradientRuleOrTheMarkAndAKernel) {
  auto ops = OpRegistry::get().all();
  EXPECT_GT(ops.size(), 60u);
  for (const OpDef* d : ops) {
    EXPECT_TRUE(static_cast<bool>(d->vjp) != !d->differentiable) << d->name;
    EXPECT_TRUE(static_cast<bool>(d->infer)) << d->name;
    if (d->kind != OpKind::source) EXPECT_NE(d->cpu, nullptr) << d->name;
  }
}

TEST(Graph, ShapeErrorsAtBuildTimeNameOpShapesAndSite) {
  Graph g;
  Value a = g.input("a", Shape{kUnknownDim, 4}, DType::float32);
  Value b = g.input("b", Shape{5, 6}, DType::float32);
  SiteScope site("model.cpp:42");
  try {
    ops::matmul(a, b);
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("matmul"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(None, 4)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(5, 6)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.cpp:42"), std::string::npos) << msg;
  }
}

TEST(Function, LinearLayerForwardAndGradient) {
  Graph g;
  Value x = g.input("x", Shape{kUnknownDim, 2}, DType::float32);
  Value w = g.variable("w", make(Shape{2, 2}, {1, 2, 3, 4}));
  Value y = ops::sum(ops::unary("square", ops::matmul(x, w)));  // sum((x w)^2)
  std::vector<Value> gw = grad(y, {w});
  Function f({x}, {{"y", y}, {"gw", gw[0]}});
  auto out = f({{"x", make(Shape{1, 2}, {1, 1})}});
  // x w = [4, 6]; y = 52; dy/dw = x^T 2 (x w) = [[8, 12], [8, 12]]
  EXPECT_FLOAT_EQ(out.at("y").item(), 52.0f);
  std::vector<float> want = {8, 12, 8, 12};
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(out.at("gw").data<float>()[i], want[i]);
}

TEST(Function, TrainingStepUpdatesTheVariable) {
  Graph g;
  Value x = g.input("x", Shape{1}, DType::float32);
  Value w = g.variable("w", make(Shape{1}, {3}));
  Value loss = ops::sum(ops::unary("square", ops::sub(w, x)));
  Value gw = grad(loss, {w})[0];
  Function step({x}, {{"loss", loss}}, {{w, ops::sub(w, ops::mul(ops::constant_like(0.25, gw), gw))}});
  for (int i = 0; i < 20; ++i) step.run({make(Shape{1}, {1})});
  EXPECT_NEAR(g.variables()->get("w").item(), 1.0, 1e-5);  // w -= 0.5 (w - 1): halves the gap
}

TEST(Function, ElementwiseChainReusesBuffers) {
  Graph g;
  Value x = g.input("x", Shape{kUnknownDim, 16}, DType::float32);
  Value y = x;
  for (int i = 0; i < 100; ++i) y = ops::unary(i % 2 ? "tanh" : "sigmoid", y);
  Function f({x}, {{"y", y}});
  Tensor in = Tensor::zeros(Shape{4, 16}, DType::float32);
  Tensor out = f.run({in})[0];
  double ref = 0.0;
  for (int i = 0; i < 100; ++i) ref = i % 2 ? std::tanh(ref) : 1.0 / (1.0 + std::exp(-ref));
  EXPECT_NEAR(out.data<float>()[17], ref, 1e-5);
  PlanStats s = f.plan_stats();
  EXPECT_LE(s.buffers, 2);
  EXPECT_GE(s.in_place, 90);
}

TEST(Function, FeedErrors) {
  Graph g;
  Value x = g.input("x", Shape{kUnknownDim, 3}, DType::float32);
  Function f({x}, {{"y", ops::mul(x, x)}});
  EXPECT_THROW(f.run({Tensor::zeros(Shape{2, 4}, DType::float32)}), Error);
  EXPECT_THROW(f.run({Tensor::zeros(Shape{2, 3}, DType::float64)}), Error);
  EXPECT_THROW(f({{"z", Tensor::zeros(Shape{2, 3}, DType::float32)}}), Error);
  EXPECT_THROW(f({}), Error);
}

TEST(Autodiff, SecondDerivativeOfCube) {
  Graph g;
  Value x = g.input("x", Shape{3}, DType::float64);
  Value y = ops::sum(ops::mul(x, ops::mul(x, x)));
  Value dx = grad(y, {x})[0];
  Value ddx = grad(ops::sum(dx), {x})[0];
  Function f({x}, {{"ddx", ddx}});
  Tensor in = Tensor::empty(Shape{3}, DType::float64);
  double v[3] = {-1, 0.5, 2};
  std::copy(v, v + 3, in.data<double>());
  Tensor out = f.run({in})[0];
  for (int i = 0; i < 3; ++i) EXPECT_DOUBLE_EQ(out.data<double>()[i], 6 * v[i]);
}

TEST(Conv, MatchesDirectLoopsWithStridePaddingAndGroups) {
  Graph g;
  const int64_t N = 2, C = 4, H = 7, W = 6, K = 6, G = 2, KH = 3, KW = 2;
  Value x = g.input("x", Shape{N, C, H, W}, DType::float64);
  Value w = g.input("w", Shape{K, C / G, KH, KW}, DType::float64);
  Attrs a{{"stride", std::vector<int64_t>{2, 1}},
          {"pad_begin", std::vector<int64_t>{1, 1}},
          {"pad_end", std::vector<int64_t>{1, 0}},
          {"dilation", std::vector<int64_t>{1, 2}},
          {"groups", int64_t(G)}};
  Value y = g.apply1("conv", {x, w}, a);
  Function f({x, w}, {{"y", y}});
  Tensor xt = Tensor::empty(Shape{N, C, H, W}, DType::float64),
         wt = Tensor::empty(Shape{K, C / G, KH, KW}, DType::float64);
  for (int64_t i = 0; i < xt.numel(); ++i) xt.data<double>()[i] = std::sin(0.37 * i);
  for (int64_t i = 0; i < wt.numel(); ++i) wt.data<double>()[i] = std::cos(0.11 * i);
  Tensor out = f.run({xt, wt})[0];
  const int64_t OH = out.shape()[2], OW = out.shape()[3];
  EXPECT_EQ(OH, (H + 2 - (KH - 1) - 1) / 2 + 1);
  EXPECT_EQ(OW, (W + 1 - 2 * (KW - 1) - 1) / 1 + 1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double ref = 0;
          const int64_t grp = k / (K / G);
          for (int64_t c = 0; c < C / G; ++c)
            for (int64_t a0 = 0; a0 < KH; ++a0)
              for (int64_t b0 = 0; b0 < KW; ++b0) {
                int64_t ih = oh * 2 - 1 + a0, iw = ow - 1 + 2 * b0;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                ref += xt.data<double>()[((n * C + grp * (C / G) + c) * H + ih) * W + iw] *
                       wt.data<double>()[((k * (C / G) + c) * KH + a0) * KW + b0];
              }
          EXPECT_NEAR(out.data<double>()[((n * K + k) * OH + oh) * OW + ow], ref, 1e-12);
        }
}

#include <atomic>
#include <chrono>
#include <thread>

#include "cpu/parallel.h"

TEST(ThreadPool, AnErrorInAnyChunkReachesTheCallerAndThePoolKeepsWorking) {
  for (int64_t bad : {int64_t(10), int64_t(999'999)}) {  // in the caller's chunk, then in a worker's
    EXPECT_THROW(kiln::cpu::parallel_for(1'000'000, 1000,
                                         [&](int64_t b, int64_t e) {
                                           if (b <= bad && bad < e) throw Error("chunk failed");
                                         }),
                 Error);
  }
  std::vector<int64_t> hits(100'000, 0);
  kiln::cpu::parallel_for(100'000, 1000, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i] += 1;
  });
  for (int64_t h : hits) ASSERT_EQ(h, 1);
}

TEST(ThreadPool, EveryIndexRunsOnceWhateverThreadTakesItsChunk) {
  // Chunks go to their own threads first and to whichever thread is free after: over many regions of
  // uneven chunks (one of them slow, so that others take the chunks of a busy thread), with pools of
  // 1 to 5 threads and back, each index is run exactly once and in a region of its own.
  const int before = kiln::num_threads();
  for (int threads : {1, 2, 3, 5, 2}) {
    kiln::set_num_threads(threads);
    for (int region = 0; region < 200; ++region) {
      const int64_t n = 1 + region % 37;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      kiln::cpu::parallel_for(n, 1, [&](int64_t b, int64_t e) {
        if (b == 0 && region % 10 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
      });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1) << threads << " threads, region " << region;
    }
  }
  kiln::set_num_threads(before);
}

TEST(ThreadPool, ResizingFromInsideARegionIsAnErrorAndAGrainOfZeroIsOne) {
  // set_num_threads inside a chunk would wait for its own region to end.
  const int before = kiln::num_threads();
  kiln::set_num_threads(2);
  EXPECT_THROW(kiln::cpu::parallel_for(4, 1, [](int64_t, int64_t) { kiln::set_num_threads(3); }), Error);
  kiln::set_num_threads(before);
  std::vector<int> hits(10, 0);
  kiln::cpu::parallel_for(10, 0, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)] += 1;
  });
  for (int h : hits) ASSERT_EQ(h, 1);
}

TEST(Cuda, AFunctionOnTheGpuNamesTheOpsWithoutAKernelOrWhyThereIsNoGpu) {
  OpRegistry& r = OpRegistry::get();
  if (!r.find("test_cpu_only")) {  // an op with a CPU kernel and no CUDA kernel
    OpDef d;
    d.name = "test_cpu_only";
    d.infer = [](const std::vector<TensorSpec>& in, const Attrs&) { return in; };
    d.cpu = [](const KernelContext& c) { c.output(0).copy_from(c.input(0)); };
    d.differentiable = false;
    r.add(std::move(d));
  }
  Graph g;
  Value x = g.input("x", Shape{2}, DType::float32);
  Value y = g.apply1("test_cpu_only", {g.apply1("relu", {x})});
  try {
    Function f({x}, {{"y", y}}, {}, false, Device::cuda);
    FAIL() << "a function with an op that has no CUDA kernel compiled for the GPU";
  } catch (const Error& e) {
    const std::string what = e.what();
    if (cuda::is_built())  // named at compile time, whether or not a GPU is here; relu has its kernel
      EXPECT_NE(what.find("no CUDA kernel for op(s) test_cpu_only;"), std::string::npos) << what;
    else
      EXPECT_NE(what.find("without its CUDA backend"), std::string::npos) << what;
  }
  Function cpu_f({x}, {{"y", y}}, {}, false);  // the same graph runs on the CPU
  EXPECT_EQ(cpu_f.device(), Device::cpu);
  if (!cuda::is_available()) EXPECT_THROW(cpu_f.set_device(Device::cuda), Error);
}
