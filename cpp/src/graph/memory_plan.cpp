// Per-shape planning: concrete shapes for every value, then a static memory plan. Values live
// in a few reusable buffers: a buffer is freed after the last step that reads its value (or any
// view of it) and handed to the next value that fits; an elementwise op writes over its input
// when that input dies at the op. Outputs get fresh memory each call, since the caller keeps it.
#include <algorithm>
#include <climits>

#include "cpu/parallel.h"
#include "kiln/error.h"
#include "runtime/program.h"
#include "runtime/row_tiles.h"

namespace kiln {

std::vector<Tensor> run_op(const OpDef& op, const Attrs& attrs, const std::vector<Tensor>& inputs, bool training) {
  std::vector<TensorSpec> in;
  for (const Tensor& t : inputs) in.push_back({t.dtype(), t.shape()});
  std::vector<TensorSpec> specs = op.infer(in, attrs);
  std::vector<Tensor> outs;
  for (const TensorSpec& s : specs)
    outs.push_back(op.kind == OpKind::alias ? Tensor() : Tensor::empty(s.shape, s.dtype));
  if (op.kind == OpKind::alias)
    outs[0] = inputs[0].view(specs[0].shape);
  else {
    std::vector<const Tensor*> ip;
    std::vector<Tensor*> op_;
    for (const Tensor& t : inputs) ip.push_back(&t);
    for (Tensor& t : outs) op_.push_back(&t);
    size_t ws = op.workspace ? op.workspace(in, specs, attrs) : 0;
    Storage scratch(ws);
    KernelContext ctx{
        attrs,          ip.data(), static_cast<int>(ip.size()), op_.data(), static_cast<int>(op_.size()), 0, training,
        scratch.data(), ws};
    op.cpu(ctx);
  }
  return outs;
}

// The kernel of every view: its output shares input 0's memory.
static void bind_view(const KernelContext& c) { c.output(0) = c.input(0).view(c.output(0).shape()); }

std::unique_ptr<Plan> make_plan(const Program& p, const std::vector<Shape>& input_shapes, Device device) {
  auto plan = std::make_unique<Plan>();
  plan->input_shapes = input_shapes;
  plan->threads = cpu::num_threads();
  plan->staged_inputs.resize(input_shapes.size());
  const bool on_gpu = device == Device::cuda;
  const int32_t n = static_cast<int32_t>(p.nodes.size());

  // 1. Slots and concrete specs.
  std::vector<std::vector<int>> slot_of(n);
  std::vector<TensorSpec> spec;   // per slot
  std::vector<int32_t> producer;  // per slot
  for (int32_t id = 0; id < n; ++id) {
    const ProgramNode& node = p.nodes[id];
    std::vector<TensorSpec> out;
    if (node.op->name == "input") {
      size_t k = std::find(p.inputs.begin(), p.inputs.end(), id) - p.inputs.begin();
      out = {TensorSpec{node.outputs[0].dtype, input_shapes.at(k)}};
    } else if (node.op->name == "variable") {
      const Tensor& v = p.variables->get(node.name);
      out = {TensorSpec{v.dtype(), v.shape()}};
    } else if (node.op->name == "constant") {
      out = {TensorSpec{node.value.dtype(), node.value.shape()}};
    } else {
      std::vector<TensorSpec> in;
      for (const Edge& e : node.inputs) in.push_back(spec[slot_of[e.node][e.index]]);
      try {
        out = node.op->infer(in, node.attrs);
      } catch (const Error& e) {
        throw Error(std::string(e.what()) + "\n  while planning " + describe(node) + " for inputs " + specs_str(in));
      }
      for (const TensorSpec& s : out)
        if (!s.shape.known()) throw Error("internal: " + describe(node) + " left a symbolic shape " + s.shape.str());
    }
    for (const TensorSpec& s : out) {
      slot_of[id].push_back(static_cast<int>(spec.size()));
      spec.push_back(s);
      producer.push_back(id);
    }
  }
  const int nslots = static_cast<int>(spec.size());
  // Views: alias ops, and ops that are the identity at these shapes (sum_to_like of a tensor
  // already of the target shape, say) share their input's memory instead of running.
  std::vector<bool> view(n, false);
  for (int32_t id = 0; id < n; ++id) {
    const ProgramNode& node = p.nodes[id];
    view[id] = node.op->kind == OpKind::alias ||
               (node.op->identity_if_same_shape &&
                spec[slot_of[id][0]] == spec[slot_of[node.inputs[0].node][node.inputs[0].index]]);
  }
  plan->slots.resize(nslots);
  for (int s = 0; s < nslots; ++s) plan->slots[s] = Tensor();

  // 2. Roots: a view's slot shares its input's memory, so liveness is tracked per root slot.
  std::vector<int> root(nslots);
  for (int s = 0; s < nslots; ++s) {
    const ProgramNode& node = p.nodes[producer[s]];
    root[s] = view[producer[s]] ? root[slot_of[node.inputs[0].node][node.inputs[0].index]] : s;
  }
  constexpr int kForever = INT_MAX;
  std::vector<int> last_use(nslots, -1);  // node id of the last reader of the root's memory
  for (int32_t id = 0; id < n; ++id) {
    const ProgramNode& node = p.nodes[id];
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      if (node.op->shape_only_from >= 0 && static_cast<int>(i) >= node.op->shape_only_from) continue;
      int r = root[slot_of[node.inputs[i].node][node.inputs[i].index]];
      last_use[r] = std::max(last_use[r], id);
    }
    if (view[id]) {  // the view is read later: keep its source alive to then
      int r = root[slot_of[id][0]];
      last_use[r] = std::max(last_use[r], id);
    }
  }
  // Views propagate their own readers to the root (aliases come after their sources).
  for (int s = nslots - 1; s >= 0; --s)
    if (root[s] != s) last_use[root[s]] = std::max(last_use[root[s]], last_use[s]);
  std::vector<bool> fresh(nslots, false), external(nslots, false);
  for (const Edge& e : p.outputs) {
    int s = slot_of[e.node][e.index];
    // On the GPU an output stays in a planned buffer: the fetch copies it to fresh host memory.
    if (p.nodes[e.node].op->kind == OpKind::compute && !view[e.node] && !on_gpu) fresh[s] = true;
    last_use[root[s]] = kForever;
  }
  // An update written by an index-aligned op (an optimizer step) that is the variable's last
  // reader goes straight into the variable's memory: no buffer, no copy after the call.
  // Update values are read after the last step (all updates apply at once, reading old values):
  // they, and the variables they may be views of, stay alive through the whole call.
  for (auto& u : p.updates) last_use[root[slot_of[u.second.node][u.second.index]]] = kForever;
  std::vector<int> readers(nslots, 0);
  for (const ProgramNode& node : p.nodes)
    for (const Edge& e : node.inputs) ++readers[slot_of[e.node][e.index]];
  std::vector<std::string> var_of(nslots);  // slots written in place, and their variables
  for (auto& [name, e] : p.updates) {
    int s = slot_of[e.node][e.index];
    const ProgramNode& writer = p.nodes[e.node];
    int32_t var_node = -1;
    for (int32_t id = 0; id < n; ++id)
      if (p.nodes[id].op->name == "variable" && p.nodes[id].name == name) var_node = id;
    if (var_node < 0 || writer.op->kind != OpKind::compute || view[e.node] || fresh[s] || readers[s] != 0) continue;
    int vr = root[slot_of[var_node][0]];
    bool reads_var = false;
    for (const Edge& in : writer.inputs) reads_var = reads_var || root[slot_of[in.node][in.index]] == vr;
    if (last_use[vr] > e.node || (reads_var && !writer.op->elementwise)) continue;
    var_of[s] = name;
  }
  for (int s = 0; s < nslots; ++s)
    external[s] = fresh[s] || !var_of[s].empty() || p.nodes[producer[s]].op->kind == OpKind::source;

  // Tiled groups of convs (runtime/row_tiles.h): their members run interleaved, so every value a group
  // reads or writes in the plan's memory stays alive to the group's last member (where it is released),
  // and the values passed inside the group live in the group's own memory, not the plan's.
  std::vector<std::vector<int32_t>> consumers(nslots);
  for (int32_t id = 0; id < n; ++id)
    for (const Edge& e : p.nodes[id].inputs) {
      auto& c = consumers[slot_of[e.node][e.index]];
      if (c.empty() || c.back() != id) c.push_back(id);
    }
  std::vector<bool> kept(nslots, false);
  for (const Edge& e : p.outputs) kept[slot_of[e.node][e.index]] = true;
  for (auto& u : p.updates) kept[slot_of[u.second.node][u.second.index]] = true;
  std::vector<TileGroupPlan> groups =
      plan_row_tiles(p, slot_of, spec, consumers, kept, on_gpu ? 1 : cpu::num_threads());
  std::vector<int> group_of(n, -1);
  std::vector<bool> in_group_memory(nslots, false);
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const int32_t last = groups[gi].nodes.back();
    for (int32_t id : groups[gi].nodes) {
      group_of[id] = static_cast<int>(gi);
      for (const Edge& e : p.nodes[id].inputs) {
        const int r = root[slot_of[e.node][e.index]];
        last_use[r] = std::max(last_use[r], last);
      }
      const int r = root[slot_of[id][0]];  // an output read only for its shape is still written
      last_use[r] = std::max(last_use[r], last);
    }
    for (int s : groups[gi].private_slots) in_group_memory[s] = true;
  }

  // 3. Buffers: walk the nodes, give each new root slot a free buffer (or its dying input's,
  // in place), then release the buffers of roots that died here.
  std::vector<size_t> capacity;
  std::vector<int> buffer_of(nslots, -1);  // final assignment, per root slot
  std::vector<bool> holding(nslots, false);
  std::vector<int> free_list;
  for (int32_t id = 0; id < n; ++id) {
    const ProgramNode& node = p.nodes[id];
    if (node.op->kind == OpKind::source) continue;
    for (size_t k = 0; k < node.outputs.size() && node.op->kind == OpKind::compute && !view[id]; ++k) {
      int s = slot_of[id][k];
      if (external[s] || in_group_memory[s]) continue;
      size_t bytes = static_cast<size_t>(spec[s].shape.numel()) * dtype_size(spec[s].dtype);
      ++plan->stats.values;
      if (node.op->elementwise && k == 0 && !node.inputs.empty()) {
        int in_slot = slot_of[node.inputs[0].node][node.inputs[0].index];
        int r = root[in_slot];
        bool shared = false;
        for (size_t i = 1; i < node.inputs.size(); ++i)
          shared = shared || root[slot_of[node.inputs[i].node][node.inputs[i].index]] == r;
        if (holding[r] && last_use[r] == id && !shared && spec[in_slot].shape == spec[s].shape &&
            dtype_size(spec[in_slot].dtype) == dtype_size(spec[s].dtype)) {
          buffer_of[s] = buffer_of[r];
          holding[r] = false;  // handed over, not released
          holding[s] = true;
          ++plan->stats.in_place;
          continue;
        }
      }
      // Best fit among free buffers; else grow the largest free one; else a new buffer.
      int best = -1;
      for (int b : free_list)
        if (capacity[b] >= bytes && (best < 0 || capacity[b] < capacity[best])) best = b;
      if (best < 0)
        for (int b : free_list)
          if (best < 0 || capacity[b] > capacity[best]) best = b;
      if (best < 0) {
        best = static_cast<int>(capacity.size());
        capacity.push_back(0);
      } else {
        free_list.erase(std::find(free_list.begin(), free_list.end(), best));
      }
      capacity[best] = std::max(capacity[best], bytes);
      buffer_of[s] = best;
      holding[s] = true;
    }
    auto release = [&](int r) {
      if (holding[r] && last_use[r] <= id) {
        free_list.push_back(buffer_of[r]);
        holding[r] = false;
      }
    };
    for (const Edge& e : node.inputs) release(root[slot_of[e.node][e.index]]);
    for (int s : slot_of[id]) release(root[s]);                        // outputs nobody reads
    if (group_of[id] >= 0 && groups[group_of[id]].nodes.back() == id)  // what the group's members held
      for (int32_t member : groups[group_of[id]].nodes) {
        for (const Edge& e : p.nodes[member].inputs) release(root[slot_of[e.node][e.index]]);
        release(root[slot_of[member][0]]);
      }
  }

  // 4. Allocate each buffer once and point the planned slots at it.
  for (size_t cap : capacity) plan->buffers.push_back(std::make_shared<Storage>(cap, device));
  for (int s = 0; s < nslots; ++s)
    if (root[s] == s && buffer_of[s] >= 0)
      plan->slots[s] = Tensor::from_storage(plan->buffers[buffer_of[s]], spec[s].shape, spec[s].dtype);
    else if (p.nodes[producer[s]].op->name == "constant")
      plan->slots[s] = p.nodes[producer[s]].value.to(device);
    else if (root[s] != s)  // a view: its kernel reads the shape from here and binds the memory
      plan->slots[s] = Tensor::from_storage(nullptr, spec[s].shape, spec[s].dtype);
  plan->stats.buffers = static_cast<int>(capacity.size());
  for (size_t cap : capacity) plan->stats.buffer_bytes += cap;

  // 5. Steps, bindings and outputs.
  size_t scratch_bytes = 0;
  std::vector<RowTiles::Member> tile_members;  // of the group being collected
  for (int32_t id = 0; id < n; ++id) {
    const ProgramNode& node = p.nodes[id];
    if (node.op->name == "variable") plan->variable_slots.push_back({slot_of[id][0], node.name});
    for (int s : slot_of[id])
      if (!var_of[s].empty()) plan->variable_slots.push_back({s, var_of[s]});
    if (node.op->kind == OpKind::source) continue;
    Step st;
    st.op = node.op;
    st.kernel = view[id] ? bind_view : on_gpu ? node.op->cuda : node.op->cpu;
    if (!st.kernel)
      throw Error("internal: no " + std::string(on_gpu ? "CUDA" : "CPU") + " kernel for " + describe(node));
    st.attrs = &node.attrs;
    st.node = id;
    for (const Edge& e : node.inputs) st.in.push_back(&plan->slots[slot_of[e.node][e.index]]);
    for (size_t k = 0; k < node.outputs.size(); ++k) {
      int s = slot_of[id][k];
      st.out.push_back(&plan->slots[s]);
      if (fresh[s]) st.fresh.push_back({static_cast<int>(k), spec[s]});
    }
    if (node.op->workspace && !view[id] && !on_gpu) {  // GPU kernels take scratch from the device pool
      std::vector<TensorSpec> in, out;
      for (const Edge& e : node.inputs) in.push_back(spec[slot_of[e.node][e.index]]);
      for (int s : slot_of[id]) out.push_back(spec[s]);
      st.workspace = node.op->workspace(in, out, node.attrs);
      if (group_of[id] < 0) scratch_bytes = std::max(scratch_bytes, st.workspace);  // (members use their group's)
    }
    if (group_of[id] < 0) {
      plan->steps.push_back(std::move(st));
      continue;
    }
    TileGroupPlan& g = groups[group_of[id]];
    const size_t i = std::find(g.nodes.begin(), g.nodes.end(), id) - g.nodes.begin();
    auto private_of = [&](const Edge& e) {
      auto it = std::find(g.private_slots.begin(), g.private_slots.end(), slot_of[e.node][e.index]);
      return it == g.private_slots.end() ? -1 : static_cast<int>(it - g.private_slots.begin());
    };
    RowTiles::Member m;
    m.conv = std::move(g.convs[i]);
    m.x_private = private_of(node.inputs[0]);
    if (m.conv->residual_input() >= 0) m.residual_private = private_of(node.inputs[m.conv->residual_input()]);
    m.out_private = private_of(Edge{id, 0});
    m.rows = g.rows[i];
    m.stage = g.stages[i];
    auto sample_floats = [&](const Edge& e) { return spec[slot_of[e.node][e.index]].shape.numel() / g.samples; };
    m.x_sample = sample_floats(node.inputs[0]);
    if (m.conv->residual_input() >= 0) m.residual_sample = sample_floats(node.inputs[m.conv->residual_input()]);
    m.out_sample = sample_floats(Edge{id, 0});
    m.step = std::move(st);
    tile_members.push_back(std::move(m));
    if (id != g.nodes.back()) continue;
    std::vector<int64_t> floats;
    for (int s : g.private_slots) floats.push_back(spec[s].shape.numel() / g.samples);
    Step group;
    group.op = node.op;
    group.attrs = &node.attrs;
    group.node = id;
    for (const RowTiles::Member& member : tile_members)  // the members' fresh outputs, made before it runs
      for (auto& [k, fresh_spec] : member.step.fresh) {
        group.fresh.push_back({static_cast<int>(group.out.size()), fresh_spec});
        group.out.push_back(member.step.out[k]);
      }
    group.tiles = std::make_shared<RowTiles>(std::move(tile_members), std::move(floats), g.parts, g.samples,
                                             std::move(g.exchanges));
    plan->stats.buffer_bytes += group.tiles->bytes();
    tile_members.clear();
    plan->steps.push_back(std::move(group));
  }
  for (int32_t i : p.inputs) plan->input_slots.push_back(slot_of[i][0]);
  for (const Edge& e : p.outputs) {
    int s = slot_of[e.node][e.index];
    plan->output_slots.push_back(s);
    plan->output_fresh.push_back(fresh[s]);
  }
  for (auto& [name, e] : p.updates) {
    int s = slot_of[e.node][e.index];
    const Tensor& v = p.variables->get(name);
    if (spec[s].shape != v.shape())
      throw Error("function: the update of variable '" + name + "' has shape " + spec[s].shape.str() +
                  ", the variable " + v.shape().str());
    plan->update_slots.push_back({name, s});
  }
  plan->scratch = std::make_shared<Storage>(scratch_bytes);
  plan->stats.buffer_bytes += scratch_bytes;
  plan->stats.steps = static_cast<int>(plan->steps.size());
  return plan;
}

}  // namespace kiln
