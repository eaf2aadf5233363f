#pragma once
// A compiled function: the graph slice from named inputs to named outputs (plus variable
// updates), optimised once (dead code, common subexpressions, constant folding) and then
// planned per concrete input shape: a static memory plan with liveness-based buffer reuse and
// in-place elementwise ops. A call with a shape seen before allocates only its outputs.
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kiln/graph.h"

namespace kiln {

struct Program;
struct Plan;

struct PlanStats {
  int steps = 0;    // kernels run per call
  int buffers = 0;  // intermediate buffers in the plan
  size_t buffer_bytes = 0;
  int values = 0;    // intermediate values those buffers hold
  int in_place = 0;  // values written over their input
};

class Function {
 public:
  // outputs: (name, value); updates: (variable, new value), applied after every call
  // (only when training is true; an inference function never writes state).
  Function(const std::vector<Value>& inputs, const std::vector<std::pair<std::string, Value>>& outputs,
           const std::vector<std::pair<Value, Value>>& updates = {}, bool training = true, Device device = Device::cpu);
  ~Function();
  Function(Function&&) noexcept;
  Function& operator=(Function&&) noexcept;

  // Inputs by position; returns outputs in order. Safe to call from several threads (calls of
  // one function are serialised; use one function per thread to run in parallel). Updates apply
  // at once, reading the values of before the call. A call that throws (a bad index, say) may
  // leave the variables that optimizer steps update in place half-written, as an interrupted
  // optimizer step would in any framework: restore from a checkpoint after such an error. Inputs must match the
  // declared dtype and shape (symbolic dims take any size), else kiln::Error names the input.
  std::vector<Tensor> run(const std::vector<Tensor>& inputs);
  std::map<std::string, Tensor> operator()(const std::map<std::string, Tensor>& feeds);

  // A function over a program loaded from a file (io/), resuming its random streams at `calls`.
  Function(std::shared_ptr<Program> program, uint64_t calls);

  const std::vector<std::string>& input_names() const;
  const std::vector<std::string>& output_names() const;
  std::vector<TensorSpec> input_specs() const;
  std::vector<TensorSpec> output_specs() const;  // symbolic (-1) dims where they depend on the inputs
  bool training() const;
  // Where the function runs. On the GPU, inputs may be host or device tensors, outputs come back
  // to the host, and the variables stay on the device between calls. Throws kiln::Error naming
  // every op without a kernel there, or saying why no GPU can be used.
  void set_device(Device device);
  Device device() const { return device_; }
  int num_updates() const;  // variables each call writes (optimizer steps, batch-norm statistics)
  // The variables this function reads and updates, shared with the functions of the same graph.
  const std::shared_ptr<VariableStore>& variables() const;
  // The trainable variables (parameters) the function reads.
  std::vector<std::string> parameters() const;
  // Calls made so far: the position of the function's random streams (saved with it).
  uint64_t calls() const { return calls_; }
  // Free-form strings saved with the function (the Python package keeps its output structure here).
  std::map<std::string, std::string>& annotations() { return annotations_; }
  const std::map<std::string, std::string>& annotations() const { return annotations_; }
  const Program& program() const { return *program_; }  // internal: for io/
  int num_nodes() const;                                // nodes after optimisation
  PlanStats plan_stats() const;                         // of the most recently used plan
  int num_plans() const;                                // distinct input shapes compiled so far
  std::string str() const;                              // the optimised program, one node a line

  // Per-node timing of the calls made while profiling is on: (node index, op, calls, seconds).
  struct ProfileEntry {
    int node;
    std::string op;
    int64_t calls;
    double seconds;
  };
  void set_profiling(bool on);
  std::vector<ProfileEntry> profile() const;

 private:
  Plan& plan_for(const std::vector<Tensor>& inputs);
  std::shared_ptr<Program> program_;
  std::vector<std::unique_ptr<Plan>> plans_;
  Plan* last_plan_ = nullptr;
  uint64_t calls_ = 0;
  Device device_ = Device::cpu;
  std::unique_ptr<std::mutex> mutex_;  // calls of one function run one at a time
  bool profiling_ = false;
  std::vector<ProfileEntry> profile_;
  std::map<std::string, std::string> annotations_;
};

}  // namespace kiln
