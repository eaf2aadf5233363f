// kiln-run: runs a function saved in a .kiln file, with no Python.
//
//   kiln-run FILE [--function NAME] --input NAME=PATH.npy ... [--output NAME=PATH.npy ...]
//            [--device cpu|cuda] [--threads N] [--bench N] [--save PATH]
//   kiln-run FILE --info
//
// Without --output, each output is summarised on stdout. --bench N runs N more times after a
// warm-up and prints the min, median and p99 latency. A training step updates its variables on
// every run; --save writes the file's functions with the updated variables.
#include <kiln/kiln.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

const char* kUsage =
    "usage: kiln-run FILE [--function NAME] --input NAME=PATH.npy ... [--output NAME=PATH.npy ...]\n"
    "                [--device cpu|cuda] [--threads N] [--bench N] [--save PATH]\n"
    "       kiln-run FILE --info\n";

struct Args {
  std::string file, function, device = "cpu", save;
  std::map<std::string, std::string> inputs, outputs;
  int threads = 0, bench = 0;
  bool info = false;
};

std::pair<std::string, std::string> name_path(const std::string& flag, const std::string& v) {
  const size_t eq = v.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == v.size())
    throw kiln::Error(flag + " takes NAME=PATH.npy, got '" + v + "'");
  return {v.substr(0, eq), v.substr(eq + 1)};
}

int positive(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    const int n = std::stoi(v, &used);
    if (used == v.size() && n > 0) return n;
  } catch (const std::exception&) {
  }
  throw kiln::Error(flag + " takes a positive integer, got '" + v + "'");
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw kiln::Error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--info")
      a.info = true;
    else if (arg == "--function")
      a.function = value();
    else if (arg == "--input")
      a.inputs.insert(name_path(arg, value()));
    else if (arg == "--output")
      a.outputs.insert(name_path(arg, value()));
    else if (arg == "--device")
      a.device = value();
    else if (arg == "--threads")
      a.threads = positive(arg, value());
    else if (arg == "--bench")
      a.bench = positive(arg, value());
    else if (arg == "--save")
      a.save = value();
    else if (arg == "-h" || arg == "--help")
      throw std::invalid_argument("");
    else if (!arg.empty() && arg[0] == '-')
      throw kiln::Error("unknown option " + arg);
    else if (a.file.empty())
      a.file = arg;
    else
      throw kiln::Error("one file at a time: got '" + a.file + "' and '" + arg + "'");
  }
  if (a.file.empty()) throw std::invalid_argument("");
  if (a.device != "cpu" && a.device != "cuda") throw kiln::Error("--device is cpu or cuda, got '" + a.device + "'");
  return a;
}

std::string spec_str(const kiln::TensorSpec& s) {
  std::string out = std::string(kiln::dtype_name(s.dtype)) + "(";
  for (int i = 0; i < s.shape.rank(); ++i)
    out += (i ? ", " : "") + (s.shape[i] < 0 ? std::string("?") : std::to_string(s.shape[i]));
  return out + ")";
}

void print_info(const Args& a, const kiln::Bundle& b) {
  struct stat st {};
  ::stat(a.file.c_str(), &st);
  int64_t params = 0, elements = 0;
  std::set<std::string> trainable;
  for (const auto& [name, f] : b.functions)
    for (const std::string& p : f->parameters()) trainable.insert(p);
  for (const auto& [name, t] : b.variables->all()) {
    elements += t.numel();
    if (trainable.count(name)) params += t.numel();
  }
  std::printf("%s: %.1f MB, %zu variables (%lld values), %lld parameters\n", a.file.c_str(), st.st_size / 1e6,
              b.variables->all().size(), static_cast<long long>(elements), static_cast<long long>(params));
  for (const std::string& name : b.names) {
    const kiln::Function& f = *b.functions.at(name);
    const std::string mode = f.num_updates() ? "training: updates " + std::to_string(f.num_updates()) + " variables"
                             : f.training()  ? "training mode"
                                             : "inference";
    std::printf("function %s (%s):\n", name.c_str(), mode.c_str());
    const auto in = f.input_specs();
    for (size_t i = 0; i < in.size(); ++i)
      std::printf("  input  %-16s %s\n", f.input_names()[i].c_str(), spec_str(in[i]).c_str());
    const auto out = f.output_specs();
    for (size_t i = 0; i < out.size(); ++i)
      std::printf("  output %-16s %s\n", f.output_names()[i].c_str(), spec_str(out[i]).c_str());
  }
}

void summarise(const std::string& name, const kiln::Tensor& t) {
  std::printf("%s: %s%s", name.c_str(), kiln::dtype_name(t.dtype()), t.shape().str().c_str());
  if (t.dtype() == kiln::DType::float32 || t.dtype() == kiln::DType::float64) {
    const kiln::Tensor c = t.contiguous();
    double lo = 0, hi = 0, sum = 0;
    for (int64_t i = 0; i < c.numel(); ++i) {
      const double v = c.dtype() == kiln::DType::float32 ? c.data<float>()[i] : c.data<double>()[i];
      lo = i ? std::min(lo, v) : v;
      hi = i ? std::max(hi, v) : v;
      sum += v;
    }
    if (c.numel()) std::printf("  min %.6g  mean %.6g  max %.6g", lo, sum / c.numel(), hi);
  }
  std::printf("\n");
}

int run(const Args& a) {
  if (a.threads) kiln::set_num_threads(a.threads);
  if (a.device == "cuda" && !kiln::cuda::is_available()) throw kiln::Error("--device cuda: " + kiln::cuda::status());
  kiln::Bundle b = kiln::load_bundle(a.file);
  if (a.info) return print_info(a, b), 0;
  if (a.function.empty() && b.names.size() > 1) {
    std::string have;
    for (const std::string& n : b.names) have += " " + n;
    throw kiln::Error(a.file + " holds several functions; choose one with --function (" + have.substr(1) + ")");
  }
  kiln::Function& f = b.at(a.function.empty() ? b.names[0] : a.function);
  if (a.device == "cuda") f.set_device(kiln::Device::cuda);
  std::vector<kiln::Tensor> inputs;
  for (const std::string& name : f.input_names()) {
    auto it = a.inputs.find(name);
    if (it == a.inputs.end()) throw kiln::Error("missing --input " + name + "=PATH.npy");
    inputs.push_back(kiln::load_npy(it->second));
  }
  for (const auto& [name, path] : a.inputs)
    if (std::find(f.input_names().begin(), f.input_names().end(), name) == f.input_names().end())
      throw kiln::Error("the function has no input '" + name + "'");
  for (const auto& [name, path] : a.outputs)
    if (std::find(f.output_names().begin(), f.output_names().end(), name) == f.output_names().end())
      throw kiln::Error("the function has no output '" + name + "'");

  std::vector<kiln::Tensor> out = f.run(inputs);
  for (size_t i = 0; i < out.size(); ++i) {
    const std::string& name = f.output_names()[i];
    auto it = a.outputs.find(name);
    if (it != a.outputs.end())
      kiln::save_npy(it->second, out[i]);
    else if (a.outputs.empty())
      summarise(name, out[i]);
  }
  if (a.bench) {
    for (int i = 0; i < 3; ++i) f.run(inputs);  // warm-up: plans, caches, page faults
    std::vector<double> us;
    for (int i = 0; i < a.bench; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      f.run(inputs);
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(us.begin(), us.end());
    auto at = [&](double q) { return us[std::min(us.size() - 1, static_cast<size_t>(q * us.size()))]; };
    std::printf("bench: %d runs, min %.1f us, median %.1f us, p99 %.1f us (%d threads)\n", a.bench, us.front(), at(0.5),
                at(0.99), kiln::num_threads());
  }
  if (!a.save.empty()) {
    std::vector<std::pair<std::string, const kiln::Function*>> all;
    for (const std::string& n : b.names) all.emplace_back(n, b.functions.at(n).get());
    kiln::save(a.save, all);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "kiln-run: %s\n", e.what());
    return 1;
  } catch (const std::invalid_argument&) {  // no file, or --help
    std::fputs(kUsage, stderr);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln-run: %s\n", e.what());
    return 1;
  }
}
