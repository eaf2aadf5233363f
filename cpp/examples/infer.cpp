// infer: classify images with a model saved from Python, no Python needed.
//
//   infer MODEL.kiln IMAGES.npy [FUNCTION]
//
// Loads the file, runs its function (the only one, or FUNCTION, e.g. "predict") on the images
// (a batch shaped as the function's first input) and prints the five highest-scoring classes of
// each image with their scores.
#include <kiln/kiln.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: infer MODEL.kiln IMAGES.npy [FUNCTION]\n");
    return 2;
  }
  try {
    kiln::Function f = kiln::load(argv[1], argc > 3 ? argv[3] : "");
    kiln::Tensor images = kiln::load_npy(argv[2]);
    kiln::Tensor scores = f.run({images}).at(0);  // (batch, classes)
    if (scores.rank() != 2 || scores.dtype() != kiln::DType::float32)
      throw kiln::Error("expected (batch, classes) float32 scores, got " + scores.shape().str());
    const int64_t n = scores.shape()[0], classes = scores.shape()[1];
    const float* s = scores.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int64_t> order(classes);
      std::iota(order.begin(), order.end(), 0);
      const int64_t k = std::min<int64_t>(5, classes);
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int64_t a, int64_t b) { return s[i * classes + a] > s[i * classes + b]; });
      std::printf("image %lld:", static_cast<long long>(i));
      for (int64_t j = 0; j < k; ++j)
        std::printf(" %lld (%.4f)", static_cast<long long>(order[j]), s[i * classes + order[j]]);
      std::printf("\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "infer: %s\n", e.what());
    return 1;
  }
  return 0;
}
