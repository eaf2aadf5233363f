#include "runtime/row_tiles.h"

#include <algorithm>

#include "cpu/parallel.h"

namespace kiln {
namespace {

// A value passed inside a group, at most: its band's share at batch 1, a sample's above (each part
// keeps whole values, of which it writes its rows). CIFAR-sized layers gain (ResNet-8's are 8 - 32 KB
// a band, 16 - 64 KB a sample); ResNet-18 at 224x224 ran 1 - 3% slower with its 28x28 and 56x56 layers
// grouped too (200 and 400 KB a band; 3 and 7% when the bands recomputed their neighbours' rows).
constexpr int64_t kMaxPrivateBytes = 64 << 10;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct Candidate {
  std::vector<int32_t> nodes;  // consecutive steps
  std::vector<conv::RowConv*> convs;
};

// The group g's private values and each member's rows per part; false where g is not a group.
bool plan_group(const Candidate& g, const Program& p, const std::vector<std::vector<int>>& slot_of,
                const std::vector<TensorSpec>& spec, const std::vector<std::vector<int32_t>>& consumers,
                const std::vector<bool>& kept, int threads, TileGroupPlan* out) {
  const size_t m = g.nodes.size();
  auto batch_of = [&](int32_t node) {
    const Edge& x = p.nodes[node].inputs[0];
    return spec[slot_of[x.node][x.index]].shape[0];
  };
  const int64_t samples = batch_of(g.nodes[0]);
  for (int32_t node : g.nodes)
    if (batch_of(node) != samples) return false;  // independent branches of other batches (a Siamese net's)
  // Fewer samples than threads: the layer-by-layer kernels use every thread, parts of samples could not.
  if (samples > 1 && samples < threads) return false;
  // one sample: bands of rows; more: each part whole samples, every row of them
  const int parts = static_cast<int>(std::min<int64_t>(threads, samples == 1 ? threads : samples));
  const int bands = samples == 1 ? parts : 1;
  auto member_of = [&](int32_t node) {
    auto it = std::find(g.nodes.begin(), g.nodes.end(), node);
    return it == g.nodes.end() ? -1 : static_cast<int>(it - g.nodes.begin());
  };
  // A value passed inside is read by members only, as their input or fused residual: private.
  std::vector<bool> internal(m, false);
  for (size_t i = 0; i < m; ++i) {
    const int s = slot_of[g.nodes[i]][0];
    int inside = 0, outside = kept[s] ? 1 : 0;
    for (int32_t c : consumers[s]) {
      const int j = member_of(c);
      if (j < 0) {
        ++outside;
        continue;
      }
      const ProgramNode& node = p.nodes[c];
      for (size_t k = 0; k < node.inputs.size(); ++k)
        if (slot_of[node.inputs[k].node][node.inputs[k].index] == s &&
            !(k == 0 || static_cast<int>(k) == g.convs[j]->residual_input()))
          return false;  // read as weights (or twice as something else)
      ++inside;
    }
    if (inside && outside) return false;  // both: the others' rows would be needed from the plan's memory
    const int64_t sample_bytes = spec[s].shape.numel() / samples * int64_t(sizeof(float));
    if (inside && sample_bytes / (samples == 1 ? parts : 1) > kMaxPrivateBytes) return false;
    internal[i] = inside > 0;
  }
  if (std::find(internal.begin(), internal.end(), true) == internal.end()) return false;
  // Rows, from the last member back. In bands each part computes its band of a value another member reads
  // as its input, and copies the rows next to it that its readers need from the parts that computed
  // them (the value is exchanged); of a value read only as a residual, the rows its readers add to.
  // Recomputing the rows where bands' needs overlap instead (a row or two a layer, twice as many before a
  // strided layer) cost more: ResNet-8 at batch 1 took 60.5 us exchanging only strided layers' inputs
  // (6.6% of its rows recomputed), 58.3 exchanging all.
  using Rows = std::pair<int64_t, int64_t>;
  std::vector<std::vector<Rows>> rows(m, std::vector<Rows>(bands)), needs(m, std::vector<Rows>(bands));
  std::vector<bool> exchanged(m, false);
  for (size_t i = m; i-- > 0;) {
    const conv::RowConv& cv = *g.convs[i];
    const int64_t oh = cv.out_rows(), unit = cv.row_unit();
    const int s = slot_of[g.nodes[i]][0];
    for (int part = 0; part < bands && internal[i]; ++part) {
      int64_t lo = oh, hi = 0;
      for (int32_t c : consumers[s]) {  // as its input, the rows the reader's rows read; as its residual, those
        const int j = member_of(c);
        const auto [r0, r1] = rows[j][part];
        if (r0 >= r1) continue;
        const std::vector<Edge>& ins = p.nodes[c].inputs;
        for (size_t k = 0; k < ins.size(); ++k) {
          if (slot_of[ins[k].node][ins[k].index] != s) continue;
          const auto read = k == 0 ? g.convs[j]->rows_read(r0, r1) : std::make_pair(r0, r1);
          lo = std::min(lo, read.first);
          hi = std::max(hi, read.second);
          exchanged[i] = exchanged[i] || (bands > 1 && k == 0);
        }
      }
      needs[i][part] = lo < hi ? Rows{lo, hi} : Rows{0, 0};
    }
    for (int part = 0; part < bands; ++part) {
      Rows r{std::min(oh, oh * part / bands / unit * unit),
             part + 1 == bands ? oh : std::min(oh, oh * (part + 1) / bands / unit * unit)};
      if (internal[i] && !exchanged[i]) {
        const auto [lo, hi] = needs[i][part];
        r = lo < hi ? Rows{lo / unit * unit, std::min(oh, round_up(hi, unit))} : Rows{0, 0};
      }
      rows[i][part] = r.first < r.second ? r : Rows{0, 0};
    }
  }
  // Each part's copies of an exchanged value: the rows it needs from the others' bands.
  std::vector<std::vector<std::vector<RowExchange::Copy>>> copies(m);
  for (size_t i = 0; i < m; ++i) {
    if (!exchanged[i]) continue;
    copies[i].resize(bands);
    for (int part = 0; part < bands; ++part)
      for (int from = 0; from < bands; ++from) {
        const int64_t r0 = std::max(needs[i][part].first, rows[i][from].first),
                      r1 = std::min(needs[i][part].second, rows[i][from].second);
        if (from != part && r0 < r1) copies[i][part].push_back({from, r0, r1});
      }
    exchanged[i] = std::any_of(copies[i].begin(), copies[i].end(), [](const auto& c) { return !c.empty(); });
  }
  // Stages: after each exchanged value's, the stage that reads it.
  std::vector<int> stage(m, 0);
  for (size_t i = 0; i < m; ++i)
    for (const Edge& e : p.nodes[g.nodes[i]].inputs)
      for (size_t j = 0; j < i; ++j)
        if (internal[j] && slot_of[e.node][e.index] == slot_of[g.nodes[j]][0])
          stage[i] = std::max(stage[i], stage[j] + (exchanged[j] ? 1 : 0));
  out->parts = parts;
  out->samples = samples;
  out->nodes = g.nodes;
  for (size_t i = 0; i < m; ++i) {
    if (!internal[i]) continue;
    out->private_slots.push_back(slot_of[g.nodes[i]][0]);
    if (!exchanged[i]) continue;  // (or every part's readers stay inside its band)
    const conv::RowConv& cv = *g.convs[i];
    RowExchange x;
    x.value = static_cast<int>(out->private_slots.size()) - 1;
    x.stage = stage[i] + 1;
    x.channels = cv.filters(), x.rows = cv.out_rows(), x.cols = cv.out_cols();
    x.copies = std::move(copies[i]);
    out->exchanges.push_back(std::move(x));
  }
  out->rows = std::move(rows);
  out->stages = std::move(stage);
  return true;
}

}  // namespace

std::vector<TileGroupPlan> plan_row_tiles(const Program& p, const std::vector<std::vector<int>>& slot_of,
                                          const std::vector<TensorSpec>& spec,
                                          const std::vector<std::vector<int32_t>>& consumers,
                                          const std::vector<bool>& kept, int threads) {
  std::vector<TileGroupPlan> groups;
  if (threads < 2 || p.training) return groups;
  // Runs of consecutive steps that can run by rows (sources between them are not steps).
  std::vector<std::vector<std::pair<int32_t, std::unique_ptr<conv::RowConv>>>> runs(1);
  for (int32_t id = 0; id < static_cast<int32_t>(p.nodes.size()); ++id) {
    const ProgramNode& node = p.nodes[id];
    if (node.op->kind == OpKind::source) continue;
    std::unique_ptr<conv::RowConv> cv;
    if (node.op->name == "conv" && node.outputs.size() == 1 && p.nodes[node.inputs[1].node].op->name == "variable") {
      std::vector<TensorSpec> in;
      for (const Edge& e : node.inputs) in.push_back(spec[slot_of[e.node][e.index]]);
      cv = conv::RowConv::make(in, node.attrs);
    }
    if (!cv) {
      if (!runs.back().empty()) runs.emplace_back();
      continue;
    }
    runs.back().emplace_back(id, std::move(cv));
  }
  for (auto& run : runs) {
    // The longest group from each start, else the next start.
    for (size_t start = 0; start + 1 < run.size();) {
      bool found = false;
      for (size_t end = run.size(); end >= start + 2 && !found; --end) {
        Candidate c;
        for (size_t i = start; i < end; ++i) {
          c.nodes.push_back(run[i].first);
          c.convs.push_back(run[i].second.get());
        }
        TileGroupPlan g;
        if (!plan_group(c, p, slot_of, spec, consumers, kept, threads, &g)) continue;
        for (size_t i = start; i < end; ++i) g.convs.push_back(std::move(run[i].second));
        groups.push_back(std::move(g));
        start = end;
        found = true;
      }
      if (!found) ++start;
    }
  }
  return groups;
}

RowTiles::RowTiles(std::vector<Member> members, std::vector<int64_t> private_floats, int parts, int64_t samples,
                   std::vector<RowExchange> exchanges)
    : members_(std::move(members)), exchanges_(std::move(exchanges)), parts_(parts), samples_(samples) {
  for (const Member& m : members_) stages_ = std::max(stages_, m.stage + 1);
  int64_t at = 0;
  for (int64_t f : private_floats) {
    offsets_.push_back(at);
    at += round_up(f, 16);
  }
  size_t buffer = 0;
  for (const Member& m : members_) buffer = std::max(buffer, m.conv->buffer_floats());
  offsets_.push_back(at);
  // A part's memory ends 4 KiB clear of anything another part writes: hardware prefetchers run
  // about 1 KiB past the end of a stream, and a line they pull from the other core costs there.
  part_floats_ = static_cast<size_t>(at + round_up(static_cast<int64_t>(buffer), 16) + 1024);
  for (int part = 0; part < parts_; ++part) memory_.emplace_back(part_floats_);
}

void RowTiles::run() {
  for (Member& m : members_) m.conv->prepare(m.step.in);
  for (int stage = 0; stage < stages_; ++stage) run_stage(stage);
}

void RowTiles::run_stage(int stage) {
  cpu::parallel_for(parts_, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t part = p0; part < p1; ++part) {
      float* mem = memory_[part].data();
      float* pad = mem + offsets_.back();
      for (const RowExchange& x : exchanges_) {  // the rows next to this band, from the parts that made them
        if (x.stage != stage) continue;
        const int64_t plane = x.rows * x.cols;
        for (const RowExchange::Copy& c : x.copies[part]) {
          const float* from = memory_[c.from].data() + offsets_[x.value] + c.r0 * x.cols;
          float* to = mem + offsets_[x.value] + c.r0 * x.cols;
          for (int64_t ch = 0; ch < x.channels; ++ch)
            std::copy(from + ch * plane, from + ch * plane + (c.r1 - c.r0) * x.cols, to + ch * plane);
        }
      }
      const bool bands = samples_ == 1;  // else whole samples [s0, s1), every row
      const int64_t s0 = bands ? 0 : samples_ * part / parts_, s1 = bands ? 1 : samples_ * (part + 1) / parts_;
      for (int64_t n = s0; n < s1; ++n)
        for (const Member& m : members_) {
          if (m.stage != stage) continue;
          const auto [r0, r1] = m.rows[bands ? part : 0];
          if (r0 >= r1) continue;
          const int ri = m.conv->residual_input();
          const float* x =
              m.x_private >= 0 ? mem + offsets_[m.x_private] : m.step.in[0]->data<float>() + n * m.x_sample;
          const float* residual = m.residual_private >= 0 ? mem + offsets_[m.residual_private]
                                  : ri >= 0               ? m.step.in[ri]->data<float>() + n * m.residual_sample
                                                          : nullptr;
          float* y =
              m.out_private >= 0 ? mem + offsets_[m.out_private] : m.step.out[0]->data<float>() + n * m.out_sample;
          m.conv->run(x, residual, y, r0, r1, pad);
        }
    }
  });
}

}  // namespace kiln
