// train: continue training a model saved from Python, no Python needed.
//
//   train MODEL.kiln STEPS X.npy Y.npy [OUT.kiln]
//
// Loads the file's "train_step" function (saved with kn.save(..., name=[..., "train_step"])),
// runs it STEPS times on the batch (X, Y), printing the loss of each step, and writes every
// function of the file with the updated variables to OUT.kiln (default: over MODEL.kiln).
#include <kiln/kiln.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc < 5 || argc > 6) {
    std::fprintf(stderr, "usage: train MODEL.kiln STEPS X.npy Y.npy [OUT.kiln]\n");
    return 2;
  }
  try {
    kiln::Bundle model = kiln::load_bundle(argv[1]);
    kiln::Function& step = model.at("train_step");
    const int steps = std::stoi(argv[2]);
    const kiln::Tensor x = kiln::load_npy(argv[3]), y = kiln::load_npy(argv[4]);
    for (int i = 0; i < steps; ++i) {
      const kiln::Tensor loss = step.run({x, y}).at(0).contiguous();
      const double v = loss.dtype() == kiln::DType::float32 ? loss.data<float>()[0] : loss.data<double>()[0];
      std::printf("step %d loss %.9g\n", i + 1, v);
    }
    std::vector<std::pair<std::string, const kiln::Function*>> all;
    for (const std::string& name : model.names) all.emplace_back(name, &model.at(name));
    kiln::save(argc > 5 ? argv[5] : argv[1], all);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train: %s\n", e.what());
    return 1;
  }
  return 0;
}
