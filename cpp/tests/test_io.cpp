// Files without Python: a training step and a predictor saved, loaded and run from C++; .npy
// round trips; damaged files give kiln::Error; the CUDA queries answer on any machine.
#include <algorithm>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>

#include "kiln/kiln.h"

using namespace kiln;

namespace {

Tensor make(const Shape& shape, std::vector<float> values) {
  Tensor t = Tensor::empty(shape, DType::float32);
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

std::string temp_path(const std::string& name) {
  return (::testing::TempDir().empty() ? "/tmp/" : ::testing::TempDir()) + std::to_string(::getpid()) + "_" + name;
}

// w starts at 3; each step moves it halfway to x = 1 (see test_core's TrainingStepUpdatesTheVariable).
struct Model {
  Graph g;
  Value x = g.input("x", Shape{1}, DType::float32);
  Value w = g.variable("w", make(Shape{1}, {3}));
  Value loss = ops::sum(ops::unary("square", ops::sub(w, x)));
  Value gw = grad(loss, {w})[0];
  Function step{{x}, {{"loss", loss}}, {{w, ops::sub(w, ops::mul(ops::constant_like(0.25, gw), gw))}}};
  Function predict{{x}, {{"y", ops::mul(w, x)}}, {}, false};
};

}  // namespace

TEST(File, SavedStepAndPredictorContinueWhereTheyWere) {
  Model m;
  m.step.run({make(Shape{1}, {1})});  // w = 2
  const std::string path = temp_path("model.kiln");
  save(path, {{"predict", &m.predict}, {"train_step", &m.step}});
  Bundle b = load_bundle(path);
  ASSERT_EQ(b.names, (std::vector<std::string>{"predict", "train_step"}));
  EXPECT_FLOAT_EQ(b.at("predict").run({make(Shape{1}, {5})})[0].item(), 10.0f);  // w x = 2 * 5
  for (int i = 0; i < 3; ++i) {  // the loaded step and the original move alike
    const double a = m.step.run({make(Shape{1}, {1})})[0].item(),
                 c = b.at("train_step").run({make(Shape{1}, {1})})[0].item();
    EXPECT_DOUBLE_EQ(a, c);
  }
  EXPECT_FLOAT_EQ(b.variables->get("w").item(), 1.125f);  // 2 -> 1.5 -> 1.25 -> 1.125, read by predict too
  EXPECT_FLOAT_EQ(b.at("predict").run({make(Shape{1}, {2})})[0].item(), 2.25f);
  EXPECT_THROW(b.at("missing"), Error);
  EXPECT_THROW(load(path), Error);                                                    // two functions: name one
  EXPECT_FLOAT_EQ(load(path, "predict").run({make(Shape{1}, {1})})[0].item(), 2.0f);  // the file is unchanged
  std::remove(path.c_str());
}

TEST(File, DamagedFilesGiveErrorsNamingTheFile) {
  Model m;
  const std::string path = temp_path("damaged.kiln");
  save(path, {{"predict", &m.predict}});
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t cut : {size_t(0), size_t(5), size_t(12), bytes.size() / 2, bytes.size() - 1}) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(cut));
    try {
      load_bundle(path);
      ADD_FAILURE() << "a file cut to " << cut << " bytes loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(load_bundle(temp_path("no-such-file.kiln")), Error);
  std::remove(path.c_str());
}

TEST(File, NpyRoundTripAndErrors) {
  const std::string path = temp_path("a.npy");
  Tensor t = make(Shape{2, 3}, {1, 2, 3, 4, 5, 6});
  save_npy(path, t);
  Tensor r = load_npy(path);
  EXPECT_EQ(r.shape(), (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(r.data<float>()[i], t.data<float>()[i]);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "not numpy";
  EXPECT_THROW(load_npy(path), Error);
  std::remove(path.c_str());
}

TEST(Cuda, QueriesAnswerOnAnyMachine) {
  const int n = cuda::device_count();
  EXPECT_GE(n, 0);
  EXPECT_EQ(cuda::is_available(), cuda::is_built() && n > 0);
  if (cuda::is_available())
    cuda::self_test();  // a kernel's result checked on the host
  else
    EXPECT_THROW(cuda::self_test(), Error);
}
