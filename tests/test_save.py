"""kn.save / kn.load: .kiln files (compiled functions of one graph with all its variables, in a
safetensors container).

1. Round trips: loaded functions compute bit for bit what the originals compute, train the same
   way from the saved state (optimizer slots, step counters, batch-norm statistics and dropout
   streams included), share their variables, and keep their names and output structures.
2. The layout: a valid safetensors file whose tensors are the variables' values, aligned.

Damaged files and the fuzz test are in test_damaged_files.py.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from kiln_files import (
    _convnet,
    _fn,
    _graph,
    _image_batches,
    _join,
    _mlp,
    _raw_tensors,
    _split,
    _tensors,
    _var,
    _vector_batches,
    _with_graph,
)

import kiln as kn

# ---------------------------------------------------------------------------------------------
# 1. Round trips
# ---------------------------------------------------------------------------------------------


def _check_round_trip(tmp_path, model, opt, step, predict, batches, probe):
    for xb, yb in batches[:3]:  # some state first: optimizer slots, step counter, running stats
        step(xb, yb)
    path = tmp_path / "model.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    fs = kn.load(path)
    assert isinstance(fs, dict) and list(fs) == ["predict", "train_step"]
    assert all(isinstance(f, kn.Function) for f in fs.values())
    assert fs["predict"].input_names == ["x"] and fs["train_step"].input_names == ["x", "y"]
    assert fs["predict"].training is False and fs["train_step"].training is True

    before = predict(probe)
    np.testing.assert_array_equal(fs["predict"](probe), before)

    original = [float(step(xb, yb)) for xb, yb in batches[3:23]]
    after_original = predict(probe)
    state_after_original = model.state_dict()
    loaded = [float(fs["train_step"](xb, yb)) for xb, yb in batches[3:23]]
    assert loaded == original  # exactly: same arithmetic, same dropout masks
    assert len(set(original)) > 1

    # The loaded predict reads what the loaded train_step wrote ...
    after_loaded = fs["predict"](probe)
    assert not np.array_equal(after_loaded, before)
    np.testing.assert_array_equal(after_loaded, after_original)
    # ... and the original model was not touched by the loaded functions.
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state_after_original[k], err_msg=k)
    return path, fs


def test_mlp_round_trip_predicts_and_trains_exactly_like_the_original(tmp_path):
    model, opt, step, predict = _mlp()
    batches = _vector_batches(23)
    probe = np.random.default_rng(9).standard_normal((5, 4)).astype(np.float32)
    _check_round_trip(tmp_path, model, opt, step, predict, batches, probe)


def test_convnet_round_trip_with_batch_norm_and_dropout(tmp_path):
    model, opt, step, predict = _convnet()
    batches = _image_batches(23)
    probe = np.random.default_rng(9).standard_normal((4, 3, 32, 32)).astype(np.float32)
    _check_round_trip(tmp_path, model, opt, step, predict, batches, probe)


def test_dropout_stream_position_is_what_makes_the_losses_match(tmp_path):
    """The exact match above needs the saved stream position: the same file with the training
    step's call counter reset to 0 gives different dropout masks, hence different losses."""
    model, opt, step, predict = _convnet()
    batches = _image_batches(5)
    for xb, yb in batches[:3]:
        step(xb, yb)
    path = tmp_path / "model.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    header, data = _split(path.read_bytes())
    graph = _graph(header)
    assert _fn(graph, "train_step")["calls"] == 3
    _fn(graph, "train_step")["calls"] = 0
    rewound = tmp_path / "rewound.kiln"
    rewound.write_bytes(_join(_with_graph(header, graph), data))
    fresh, replayed = kn.load(path)["train_step"], kn.load(rewound)["train_step"]
    xb, yb = batches[3]
    assert float(fresh(xb, yb)) == float(step(xb, yb))
    assert float(replayed(xb, yb)) != float(step(xb, yb))


def test_batch_norm_statistics_are_restored_and_updated_like_the_original(tmp_path):
    model, opt, step, predict = _convnet()
    batches = _image_batches(6)
    for xb, yb in batches[:3]:
        step(xb, yb)
    path = tmp_path / "model.kiln"
    kn.save(path, {"predict": predict, "train_step": step})
    fs = kn.load(path)
    for xb, yb in batches[3:]:
        step(xb, yb)
        fs["train_step"](xb, yb)
    again = tmp_path / "again.kiln"
    kn.save(again, fs)  # a loaded bundle saves like the original
    from_loaded = _raw_tensors(again.read_bytes())
    bn = model[1]
    for key in ("running_mean", "running_var"):
        var = _var(getattr(bn, key))
        np.testing.assert_array_equal(from_loaded[var], model.state_dict()[f"1.{key}"], err_msg=key)
    assert not np.array_equal(model.state_dict()["1.running_mean"], np.zeros(8, np.float32))


def test_saving_a_loaded_bundle_over_its_own_file(tmp_path):
    """kn.save writes beside the file and renames: a function loaded from the old file (which is
    memory-mapped) keeps working, and the new file holds the trained state."""
    model, opt, step, predict = _mlp()
    batches = _vector_batches(6)
    path = tmp_path / "model.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    fs = kn.load(path)
    for xb, yb in batches:
        fs["train_step"](xb, yb)
        step(xb, yb)
    kn.save(path, fs)
    probe = batches[0][0]
    np.testing.assert_array_equal(fs["predict"](probe), predict(probe))
    np.testing.assert_array_equal(kn.load(path)["predict"](probe), predict(probe))
    assert not list(tmp_path.glob("*.tmp*"))


def test_output_structures_and_names_survive(tmp_path):
    a, b = kn.input("a", (None, 2)), kn.input("b", (None, 2))
    w = kn.Parameter(np.array([[1.0, -2.0], [0.5, 3.0]]), name="w")
    single = kn.function([a, b], a @ w + b)
    listed = kn.function([a, b], [a + b, a * b, kn.sum(a @ w)])
    named = kn.function([a, b], {"total": a + b, "diff": a - b})
    path = tmp_path / "structures.kiln"
    kn.save(path, single, listed, named, name=["single", "listed", "named"])
    fs = kn.load(path)
    assert list(fs) == ["single", "listed", "named"]
    av = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    bv = np.array([[10, 20], [30, 40], [50, 60]], np.float32)

    out = fs["single"](av, bv)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, av @ np.array([[1, -2], [0.5, 3]], np.float32) + bv)
    np.testing.assert_array_equal(out, single(av, bv))

    out = fs["listed"](av, b=bv)
    assert isinstance(out, list) and len(out) == 3
    for got, want in zip(out, listed(av, bv)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out[1], av * bv)

    out = fs["named"](b=bv, a=av)
    assert isinstance(out, dict) and list(out) == ["total", "diff"]
    np.testing.assert_array_equal(out["diff"], av - bv)
    assert fs["named"].output_names == ["total", "diff"]
    assert fs["listed"].output_names == ["output0", "output1", "output2"]
    assert fs["single"].output_names == ["output"]
    assert fs["single"].input_names == ["a", "b"]


def test_one_function_loads_as_a_function_several_as_a_dict_in_order(tmp_path):
    model, opt, step, predict = _mlp()
    one = tmp_path / "one.kiln"
    kn.save(one, predict, name="predict")
    f = kn.load(one)
    assert isinstance(f, kn.Function)
    x = _vector_batches(1)[0][0]
    np.testing.assert_array_equal(f(x), predict(x))

    several = tmp_path / "several.kiln"
    kn.save(several, step, predict, name=["zeta", "alpha"])  # save order, not sorted
    fs = kn.load(several)
    assert isinstance(fs, dict) and list(fs) == ["zeta", "alpha"]
    assert fs["zeta"].input_names == ["x", "y"]
    assert [f["name"] for f in _graph(_split(several.read_bytes())[0])["functions"]] == ["zeta", "alpha"]


def test_dict_form_and_default_names(tmp_path):
    model, opt, step, predict = _mlp()
    x = _vector_batches(1)[0][0]

    kn.save(tmp_path / "dict.kiln", {"train_step": step, "predict": predict})
    fs = kn.load(tmp_path / "dict.kiln")
    assert list(fs) == ["train_step", "predict"]
    np.testing.assert_array_equal(fs["predict"](x), predict(x))

    kn.save(tmp_path / "main.kiln", predict)
    assert [f["name"] for f in _graph(_split((tmp_path / "main.kiln").read_bytes())[0])["functions"]] == [
        "main"
    ]
    assert isinstance(kn.load(tmp_path / "main.kiln"), kn.Function)

    kn.save(tmp_path / "three.kiln", predict, step, predict)
    assert list(kn.load(tmp_path / "three.kiln")) == ["function0", "function1", "function2"]

    kn.save(str(tmp_path / "str.kiln"), predict)  # a str path as well as a Path
    assert isinstance(kn.load(str(tmp_path / "str.kiln")), kn.Function)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda p, f, g: kn.save(p, f, g, name=["same", "same"]), "'same' twice"),
        (lambda p, f, g: kn.save(p, f, g, name=["only_one"]), "2 functions but 1 names"),
        (lambda p, f, g: kn.save(p, f, name=["a", "b"]), "1 functions but 2 names"),
        (lambda p, f, g: kn.save(p, f, name=""), "non-empty"),
        (lambda p, f, g: kn.save(p, {"a": f, "b": "not a function"}), "'b' is a str"),
        (lambda p, f, g: kn.save(p, {"a": f}, name="a"), "not both"),
        (lambda p, f, g: kn.save(p, f, 42), "'function1' is a int"),
        (lambda p, f, g: kn.save(p), "no functions"),
    ],
    ids=[
        "duplicate",
        "too_few_names",
        "too_many_names",
        "empty_name",
        "not_a_function",
        "dict_and_names",
        "not_a_function_positional",
        "nothing",
    ],  # fmt: skip
)
def test_bad_save_calls_are_errors_and_write_nothing(tmp_path, call, fragment):
    model, opt, step, predict = _mlp()
    path = tmp_path / "out.kiln"
    with pytest.raises(kn.Error) as e:
        call(path, step, predict)
    assert fragment in str(e.value)
    assert not list(tmp_path.iterdir())


def test_functions_of_two_graphs_are_an_error(tmp_path):
    model, opt, step, predict = _mlp()
    with kn.Graph():
        z = kn.input("z", (2,))
        other = kn.function([z], z * kn.Parameter(np.ones(2), name="v"))
    path = tmp_path / "out.kiln"
    with pytest.raises(kn.Error, match="'predict' and 'other' come from different graphs"):
        kn.save(path, predict, other, name=["predict", "other"])
    with pytest.raises(kn.Error, match="different graphs"):
        kn.save(path, {"other": other, "predict": predict})
    assert not list(tmp_path.iterdir())
    # A loaded function belongs to the file's own graph, not to the one it was saved from.
    kn.save(path, predict)
    with pytest.raises(kn.Error, match="different graphs"):
        kn.save(tmp_path / "mixed.kiln", kn.load(path), step)


def test_saving_to_an_unwritable_place_is_an_error(tmp_path):
    model, opt, step, predict = _mlp()
    missing = tmp_path / "no" / "such" / "dir" / "model.kiln"
    with pytest.raises(kn.Error, match="cannot write"):
        kn.save(missing, predict)


def test_loading_a_missing_file_or_a_directory_names_it(tmp_path):
    missing = tmp_path / "missing.kiln"
    with pytest.raises(kn.Error) as e:
        kn.load(missing)
    assert str(missing) in str(e.value) and "cannot open" in str(e.value)
    with pytest.raises(kn.Error) as e:
        kn.load(tmp_path)
    assert str(tmp_path) in str(e.value) and "not a regular file" in str(e.value)


def test_safetensors_reads_every_variable_with_its_current_value(tmp_path):
    model, opt, step, predict = _convnet()
    for xb, yb in _image_batches(3):
        step(xb, yb)
    path = tmp_path / "model.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    tensors = _tensors(path)

    state = model.state_dict()
    stored = dict(model.named_parameters()) | dict(model.named_buffers())
    assert set(stored) == set(state) == {
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "6.weight", "6.bias"
    }  # fmt: skip
    for key, p in stored.items():
        got = tensors[_var(p)]
        assert got.dtype == state[key].dtype and got.shape == state[key].shape, key
        np.testing.assert_array_equal(got, state[key], err_msg=key)
    assert not np.array_equal(state["1.running_var"], np.ones(8, np.float32))  # statistics did move

    opt_state = opt.state_dict()["state"]  # torch's layout: without amsgrad's unused slot
    for i, slots in enumerate(opt.state):
        assert {"exp_avg", "exp_avg_sq"} <= set(opt_state[i]) - {"step"} <= set(slots)
        for slot, var in slots.items():
            want = opt_state[i][slot] if slot in opt_state[i] else var.numpy()
            np.testing.assert_array_equal(tensors[_var(var)], want, err_msg=f"{i}.{slot}")
        assert np.any(tensors[_var(slots["exp_avg_sq"])] > 0)
    assert tensors[_var(opt.step_count)].dtype == np.int64
    assert tensors[_var(opt.step_count)] == 3 == opt_state[0]["step"]
    assert "adam.step" in tensors and "batchnorm2d.running_mean" in tensors and "linear.weight" in tensors

    # Everything else is a function's constant; every variable of the graph JSON has its tensor.
    header, _ = _split(path.read_bytes())
    variables = {v["name"]: v["spec"] for v in _graph(header)["variables"]}
    assert set(tensors) - set(variables) == {k for k in tensors if k.startswith("kiln.constant/")}
    for name, (dtype, shape) in variables.items():
        assert tensors[name].dtype == np.dtype(dtype) and list(tensors[name].shape) == shape, name
    for name in (k for k in tensors if k.startswith("kiln.constant/")):
        _, function, node = name.split("/")
        assert _fn(_graph(header), function)["nodes"][int(node)]["tensor"] == name


def test_a_file_of_format_version_1_still_loads(tmp_path):
    """Version 2 added fused convolutions to what a program may hold; a version-1 file (one
    without them: an MLP) loads and runs as before."""
    _, _, _, predict = _mlp()
    path = tmp_path / "model.kiln"
    kn.save(path, predict, name="predict")
    header, data = _split(path.read_bytes())
    assert header["__metadata__"]["kiln.format"] == "2"
    header["__metadata__"]["kiln.format"] = "1"
    path.write_bytes(_join(header, data))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(kn.load(path)(x), predict(x))


def test_file_layout_is_aligned_and_tensors_are_raw_little_endian(tmp_path):
    model, opt, step, predict = _convnet()
    for xb, yb in _image_batches(2):
        step(xb, yb)
    path = tmp_path / "model.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = _split(raw)
    assert (8 + n) % 64 == 0
    meta = header.pop("__metadata__")
    assert meta["kiln.format"] == "2" and set(meta) == {"kiln.format", "kiln.graph"}
    graph = json.loads(meta["kiln.graph"])
    assert set(graph) == {"functions", "variables"}
    for f in graph["functions"]:
        assert {"name", "training", "calls", "annotations", "inputs", "input_names", "output_names", "outputs",
                "updates", "nodes"} <= set(f)  # fmt: skip

    sizes = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "U8": 1, "BOOL": 1}
    spans = []
    for name, t in header.items():
        begin, end = t["data_offsets"]
        size = sizes[t["dtype"]]
        assert (8 + n + begin) % size == 0, name
        assert end - begin == size * int(np.prod(t["shape"], dtype=np.int64)), name
        spans.append((begin, end))
    values = _raw_tensors(raw)
    np.testing.assert_array_equal(values["linear.weight"], model.state_dict()["6.weight"])
    np.testing.assert_array_equal(values["batchnorm2d.running_var"], model.state_dict()["1.running_var"])
    assert values["adam.step"] == 2 and values["adam.step"].dtype == np.int64
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == len(data)  # no slack, nothing after the tensors
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
