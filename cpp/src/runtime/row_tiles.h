#pragma once
// Tiled execution of chains of small convolutions on the CPU. A group of them runs as one step: each
// thread computes, layer after layer, its part of the group's values into memory of its own.
// - One sample: a part is a band of rows of each value. The group runs in stages, one parallel region
//   each; before a stage, each part copies from the other parts' memory the rows next to its band that
//   the stage's layers read. Split layer by layer in the plan's memory, each thread read rows of the
//   other's band in every layer, and hardware prefetchers ran on into it: where the host placed the two
//   virtual CPUs far apart (a cache line 200 ns away), two threads ran ResNet-8 no faster than one.
//   Bands that recomputed the rows where their needs overlap, meeting only at the chains' ends, cost
//   more than the copies (a strided layer doubles the rows before it).
// - More: a part is a range of samples, each run through the whole chain while its values stay in L2
//   (layer by layer, a batch of 32 CIFAR images streamed 2 MB a layer through L3).
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "cpu/aligned.h"
#include "ops/conv_rows.h"
#include "runtime/program.h"

namespace kiln {

// A private value passed between a group's stages (one sample, in bands): a (C, H, W) array in each
// part's memory, of which each part computed its band of rows; at the start of `stage` each part copies
// the rows `copies` lists from the parts that computed them.
struct RowExchange {
  int value = -1;  // the private value's index
  int stage = 0;
  int64_t channels = 0, rows = 0, cols = 0;
  struct Copy {
    int from;
    int64_t r0, r1;
  };
  std::vector<std::vector<Copy>> copies;  // per part
};

// One group, built by the planner: consecutive "conv" steps whose values passed between them are read
// by no other step.
class RowTiles {
 public:
  struct Member {
    Step step;  // the conv's own step: its inputs and output in the plan
    std::unique_ptr<conv::RowConv> conv;
    int x_private = -1, residual_private = -1, out_private = -1;  // values kept per part, or -1: the plan's
    std::vector<std::pair<int64_t, int64_t>> rows;                // the output rows each part computes
    int64_t x_sample = 0, residual_sample = 0, out_sample = 0;    // floats a sample of the plan's tensors
    int stage = 0;
  };

  // private_floats: of each private value, one sample's; samples: the batch (above 1: parts of samples).
  RowTiles(std::vector<Member> members, std::vector<int64_t> private_floats, int parts, int64_t samples,
           std::vector<RowExchange> exchanges = {});
  size_t bytes() const { return memory_.size() * part_floats_ * sizeof(float); }  // the parts' own memory
  void run();

 private:
  void run_stage(int stage);
  std::vector<Member> members_;
  std::vector<RowExchange> exchanges_;
  int stages_ = 1;
  std::vector<int64_t> offsets_;  // of each private value in a part's memory, then the pad buffer
  int parts_;
  int64_t samples_;
  size_t part_floats_ = 0;
  std::vector<cpu::AlignedFloats> memory_;  // a part's: its private values and pad buffer, allocated apart
};

// A group as the planner finds it: its nodes, each one's RowConv, and how its work is cut.
struct TileGroupPlan {
  int parts = 0;
  int64_t samples = 1;
  std::vector<int32_t> nodes;
  std::vector<std::unique_ptr<conv::RowConv>> convs;
  std::vector<int> private_slots;                              // the values passed inside the group
  std::vector<std::vector<std::pair<int64_t, int64_t>>> rows;  // per member, per part
  std::vector<int> stages;                                     // per member
  std::vector<RowExchange> exchanges;
};
// The groups of a plan. `slot_of`, `spec`: the plan's values; `consumers[s]`: the nodes reading slot s;
// `kept[s]`: s is a function output or an update; `threads`: the parts a group's work is cut into (at most).
std::vector<TileGroupPlan> plan_row_tiles(const Program& p, const std::vector<std::vector<int>>& slot_of,
                                          const std::vector<TensorSpec>& spec,
                                          const std::vector<std::vector<int32_t>>& consumers,
                                          const std::vector<bool>& kept, int threads);

}  // namespace kiln
