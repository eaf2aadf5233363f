#pragma once
// Internal: the optimised, shape-independent program a Function runs, and the per-shape plan.
#include <memory>
#include <string>
#include <vector>

#include "kiln/function.h"
#include "kiln/op.h"

namespace kiln {

struct ProgramNode {
  const OpDef* op = nullptr;
  Attrs attrs;
  std::vector<Edge> inputs;         // edges into Program::nodes
  std::vector<TensorSpec> outputs;  // symbolic specs
  std::string name, site;
  Tensor value;  // constants only
};

struct Program {
  std::vector<ProgramNode> nodes;  // topological order
  std::vector<int32_t> inputs;     // node ids of the inputs, in call order
  std::vector<std::string> input_names, output_names;
  std::vector<Edge> outputs;
  std::vector<std::pair<std::string, Edge>> updates;  // variable name <- value
  std::shared_ptr<VariableStore> variables;
  bool training = true;
};

// graph/passes.cpp: slice the graph, then fold constants, merge common subexpressions, and
// drop dead nodes.
std::shared_ptr<Program> build_program(const std::vector<Value>& inputs,
                                       const std::vector<std::pair<std::string, Value>>& outputs,
                                       const std::vector<std::pair<Value, Value>>& updates, bool training);

// Runs one op outside any plan (constant folding, tests): allocates its outputs.
std::vector<Tensor> run_op(const OpDef& op, const Attrs& attrs, const std::vector<Tensor>& inputs, bool training);

class RowTiles;  // runtime/row_tiles.h

struct Step {
  const OpDef* op = nullptr;
  KernelFn kernel = nullptr;        // the op's, or the view binding when the node is a view here
  std::shared_ptr<RowTiles> tiles;  // set: this step runs a row-tiled group of convs instead
  const Attrs* attrs = nullptr;
  std::vector<const Tensor*> in;
  std::vector<Tensor*> out;
  std::vector<std::pair<int, TensorSpec>> fresh;  // outputs allocated anew each call
  size_t workspace = 0;                           // scratch bytes (Plan::scratch holds the most)
  int32_t node = -1;
};

struct Plan {
  std::vector<Shape> input_shapes;  // the cache key, with the thread count
  int threads = 1;            // the pool's size the plan was made for: its workspaces and tiled groups are cut for it
  std::vector<Tensor> slots;  // one per node output; never resized after planning
  std::vector<Step> steps;
  std::vector<int> input_slots;
  std::vector<std::pair<int, std::string>> variable_slots;
  std::vector<int> output_slots;
  std::vector<bool> output_fresh;  // false: the output must be copied out (a view or a source)
  std::vector<std::pair<std::string, int>> update_slots;
  std::vector<std::shared_ptr<Storage>> buffers;
  std::vector<Tensor> staged_inputs;  // device copies of host inputs (GPU plans), one per input
  std::shared_ptr<Storage> scratch;   // shared by the kernels that need workspace, one at a time
  PlanStats stats;
};

// graph/memory_plan.cpp
// On the GPU every value lives in device buffers; outputs are copied to the host when fetched.
std::unique_ptr<Plan> make_plan(const Program& program, const std::vector<Shape>& input_shapes, Device device);

// "matmul (at model.py:12)" for run-time messages.
std::string describe(const ProgramNode& n);

}  // namespace kiln
