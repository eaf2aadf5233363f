#include "kiln/function.h"

#include <algorithm>
#include <chrono>
#include <sstream>

#include "kiln/cuda.h"
#include "kiln/error.h"
#include "kiln/threads.h"
#include "runtime/device.h"
#include "runtime/program.h"
#include "runtime/row_tiles.h"

namespace kiln {

Function::Function(const std::vector<Value>& inputs, const std::vector<std::pair<std::string, Value>>& outputs,
                   const std::vector<std::pair<Value, Value>>& updates, bool training, Device device)
    : program_(build_program(inputs, outputs, updates, training)), mutex_(std::make_unique<std::mutex>()) {
  set_device(device);
}

Function::Function(std::shared_ptr<Program> program, uint64_t calls)
    : program_(std::move(program)), calls_(calls), mutex_(std::make_unique<std::mutex>()) {}

Function::~Function() = default;
Function::Function(Function&&) noexcept = default;
Function& Function::operator=(Function&&) noexcept = default;

const std::vector<std::string>& Function::input_names() const { return program_->input_names; }
const std::vector<std::string>& Function::output_names() const { return program_->output_names; }
int Function::num_nodes() const { return static_cast<int>(program_->nodes.size()); }
int Function::num_plans() const { return static_cast<int>(plans_.size()); }
PlanStats Function::plan_stats() const { return last_plan_ ? last_plan_->stats : PlanStats{}; }

bool Function::training() const { return program_->training; }

void Function::set_device(Device device) {
  std::lock_guard<std::mutex> lock(*mutex_);
  if (device == device_) return;
  if (device == Device::cuda) {
    std::string missing;
    for (const ProgramNode& n : program_->nodes)
      if (n.op->kind == OpKind::compute && !n.op->cuda && missing.find(" " + n.op->name + " ") == std::string::npos)
        missing += " " + n.op->name + " ";
    if (!missing.empty() && cuda::is_built())
      throw Error("function: no CUDA kernel for op(s)" + missing.substr(0, missing.size() - 1) +
                  "; run this function on the CPU");
    if (!cuda::is_available()) throw Error("function: device cuda: " + cuda::status());
  }
  device_ = device;
  plans_.clear();  // plans hold buffers on the device they were made for
  last_plan_ = nullptr;
}
int Function::num_updates() const { return static_cast<int>(program_->updates.size()); }
const std::shared_ptr<VariableStore>& Function::variables() const { return program_->variables; }

std::vector<std::string> Function::parameters() const {
  std::vector<std::string> out;
  for (const ProgramNode& n : program_->nodes)
    if (n.op->name == "variable" && n.attrs.i("trainable", 1)) out.push_back(n.attrs.s("name"));
  return out;
}

std::vector<TensorSpec> Function::output_specs() const {
  std::vector<TensorSpec> out;
  for (const Edge& e : program_->outputs) out.push_back(program_->nodes[e.node].outputs[e.index]);
  return out;
}

std::vector<TensorSpec> Function::input_specs() const {
  std::vector<TensorSpec> out;
  for (int32_t id : program_->inputs) out.push_back(program_->nodes[id].outputs[0]);
  return out;
}

Plan& Function::plan_for(const std::vector<Tensor>& inputs) {
  const auto& names = program_->input_names;
  if (inputs.size() != names.size())
    throw Error("function: expected " + std::to_string(names.size()) + " inputs, got " + std::to_string(inputs.size()));
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& want = program_->nodes[program_->inputs[i]].outputs[0];
    const Tensor& got = inputs[i];
    bool ok = got.defined() && got.dtype() == want.dtype && got.rank() == want.shape.rank();
    for (int d = 0; ok && d < got.rank(); ++d) ok = want.shape[d] < 0 || want.shape[d] == got.shape()[d];
    if (!ok)
      throw Error("function: input '" + names[i] + "' expects " + want.str() + ", got " +
                  (got.defined() ? std::string(dtype_name(got.dtype())) + got.shape().str() : "nothing"));
  }
  const int threads = num_threads();                   // a plan is cut for a pool size: set_num_threads makes another
  if (last_plan_ && last_plan_->threads == threads) {  // the common case: same shapes as last time
    bool same = true;
    for (size_t i = 0; same && i < inputs.size(); ++i) same = last_plan_->input_shapes[i] == inputs[i].shape();
    if (same) return *last_plan_;
  }
  for (size_t k = 0; k < plans_.size(); ++k) {
    bool same = plans_[k]->threads == threads;
    for (size_t i = 0; same && i < inputs.size(); ++i) same = plans_[k]->input_shapes[i] == inputs[i].shape();
    if (same) {  // move it to the back: the cache evicts from the front
      std::rotate(plans_.begin() + k, plans_.begin() + k + 1, plans_.end());
      return *(last_plan_ = plans_.back().get());
    }
  }
  std::vector<Shape> shapes;
  for (const Tensor& t : inputs) shapes.push_back(t.shape());
  // Each plan holds its buffers: keep the most recently used few (varying sequence lengths or
  // image sizes would otherwise grow memory without bound).
  constexpr size_t kMaxPlans = 8;
  if (plans_.size() >= kMaxPlans) plans_.erase(plans_.begin());
  plans_.push_back(make_plan(*program_, shapes, device_));
  return *(last_plan_ = plans_.back().get());
}

std::vector<Tensor> Function::run(const std::vector<Tensor>& inputs) {
  std::lock_guard<std::mutex> lock(*mutex_);
  Plan& plan = plan_for(inputs);
  // Whatever happens, drop references to caller memory and to this call's outputs afterwards.
  struct Release {
    Plan& plan;
    ~Release() {
      for (int s : plan.input_slots) plan.slots[s] = Tensor();
      for (size_t i = 0; i < plan.output_slots.size(); ++i)
        if (plan.output_fresh[i]) plan.slots[plan.output_slots[i]] = Tensor();
    }
  } release{plan};
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor& slot = plan.slots[plan.input_slots[i]];
    if (inputs[i].device() == device_ || device_ == Device::cpu) {
      slot = inputs[i].to(device_).contiguous();
    } else {  // a host batch for the GPU: into the plan's own device buffer, allocated once
      Tensor& staged = plan.staged_inputs[i];
      if (!staged.defined()) staged = Tensor::empty(inputs[i].shape(), inputs[i].dtype(), device_);
      staged.copy_from(inputs[i]);
      slot = staged;
    }
  }
  for (auto& [slot, name] : plan.variable_slots) plan.slots[slot] = program_->variables->on(name, device_);
  const uint64_t counter = calls_++;
  for (Step& st : plan.steps) {
    for (auto& [k, spec] : st.fresh) *st.out[k] = Tensor::empty(spec.shape, spec.dtype);
    KernelContext ctx{
        *st.attrs, st.in.data(),       static_cast<int>(st.in.size()), st.out.data(), static_cast<int>(st.out.size()),
        counter,   program_->training, plan.scratch->data(),           st.workspace};
    auto execute = [&] { st.tiles ? st.tiles->run() : st.kernel(ctx); };
    try {
      if (profiling_) {
        auto t0 = std::chrono::steady_clock::now();
        execute();
        if (device_ != Device::cpu) device::synchronize();  // time the kernel, not its launch
        ProfileEntry& e = profile_[st.node];
        e.calls += 1;
        e.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } else {
        execute();
      }
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + "\n  in " + describe(program_->nodes[st.node]));
    }
  }
  std::vector<Tensor> out;
  out.reserve(plan.output_slots.size());
  for (size_t i = 0; i < plan.output_slots.size(); ++i) {
    const Tensor& t = plan.slots[plan.output_slots[i]];
    bool repeated = false;  // the same value asked for twice: each caller array owns its memory
    for (size_t j = 0; j < i; ++j) repeated = repeated || plan.output_slots[j] == plan.output_slots[i];
    if (t.device() != Device::cpu)  // fetched: the caller gets host memory
      out.push_back(t.to(Device::cpu));
    else
      out.push_back(plan.output_fresh[i] && !repeated ? t : t.clone());
  }
  // Updates apply at once: a value that is itself (a view of) a variable is read before any
  // variable is written (a swap, or a target network copied from weights updated in this call).
  std::vector<Tensor> values;
  values.reserve(plan.update_slots.size());
  for (auto& [name, slot] : plan.update_slots) {
    const Tensor& v = plan.slots[slot];
    bool is_variable = false;
    for (auto& [other, unused] : plan.update_slots)
      is_variable = is_variable || (other != name && program_->variables->get(other).storage() == v.storage());
    values.push_back(is_variable ? v.clone() : v);
  }
  for (size_t i = 0; i < values.size(); ++i) {
    Tensor& var = program_->variables->on(plan.update_slots[i].first, device_);  // also those only written
    if (var.raw() != values[i].raw()) var.copy_from(values[i]);
    var.storage()->touch();  // written in place by its kernel, or copied: caches of it are stale
  }
  if (device_ != Device::cpu) device::synchronize();  // the call's GPU work is done when it returns
  return out;
}

std::map<std::string, Tensor> Function::operator()(const std::map<std::string, Tensor>& feeds) {
  const auto& names = program_->input_names;
  for (auto& [k, v] : feeds)
    if (std::find(names.begin(), names.end(), k) == names.end()) {
      std::string list;
      for (auto& n : names) list += (list.empty() ? "" : ", ") + n;
      throw Error("function: unknown input '" + k + "' (inputs: " + list + ")");
    }
  std::vector<Tensor> in;
  for (const std::string& n : names) {
    auto it = feeds.find(n);
    if (it == feeds.end()) throw Error("function: missing input '" + n + "'");
    in.push_back(it->second);
  }
  std::vector<Tensor> out = run(in);
  std::map<std::string, Tensor> result;
  for (size_t i = 0; i < out.size(); ++i) result[program_->output_names[i]] = out[i];
  return result;
}

void Function::set_profiling(bool on) {
  std::lock_guard<std::mutex> lock(*mutex_);
  profiling_ = on;
  if (on) {
    profile_.clear();
    for (size_t i = 0; i < program_->nodes.size(); ++i)
      profile_.push_back({static_cast<int>(i), program_->nodes[i].op->name, 0, 0.0});
  }
}

std::vector<Function::ProfileEntry> Function::profile() const {
  std::vector<ProfileEntry> out;
  for (const ProfileEntry& e : profile_)
    if (e.calls) out.push_back(e);
  return out;
}

std::string Function::str() const {
  std::ostringstream os;
  for (size_t id = 0; id < program_->nodes.size(); ++id) {
    const ProgramNode& n = program_->nodes[id];
    os << "%" << id << " = " << n.op->name << "(";
    for (size_t i = 0; i < n.inputs.size(); ++i)
      os << (i ? ", " : "") << "%" << n.inputs[i].node
         << (n.inputs[i].index ? ":" + std::to_string(n.inputs[i].index) : "");
    os << ")";
    if (!n.attrs.items().empty()) os << " {" << n.attrs.str() << "}";
    os << " -> ";
    for (size_t k = 0; k < n.outputs.size(); ++k) os << (k ? ", " : "") << n.outputs[k].str();
    if (!n.name.empty()) os << "  '" << n.name << "'";
    os << "\n";
  }
  return os.str();
}

}  // namespace kiln
