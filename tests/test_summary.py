"""kn.summary: output shapes, parameter counts, FLOPs (CS231n's count) and activation memory.

Convolution and pooling layers are kn.nn's when they exist; until then, stand-ins defined here
with torch's class names and attributes (kernel_size, stride, padding, in_channels,
out_channels, groups, weight) whose forward only produces the right output shape."""

import math

import numpy as np
import pytest

import kiln as kn
from kiln.summary import summary

nn = kn.nn
KB = 4 / 1024  # float32 bytes per element, in KB


# ---- stand-ins for layers kn.nn may not have yet ----


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


class _FakeLayer(nn.Module):
    """Output of the right shape: the input summed to (N, 1, ..., 1), broadcast."""

    def forward(self, x):
        s = kn.sum(x, axis=tuple(range(1, x.ndim)), keepdims=True)
        return kn.broadcast_to(s, (x.shape[0],) + self.out_shape(x.shape[1:]))


def _fake_conv(name, n, transpose=False):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True):
        _FakeLayer.__init__(self)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _tuple(kernel_size, n), _tuple(stride, n)
        self.padding = _tuple(padding, n)
        w = (in_channels, out_channels // groups) if transpose else (out_channels, in_channels // groups)
        self.weight = kn.Parameter(np.zeros(w + self.kernel_size), name=f"{name}.weight")
        self.bias = kn.Parameter(np.zeros(out_channels), name=f"{name}.bias") if bias else None

    def out_shape(self, in_shape):
        k, s, p = self.kernel_size, self.stride, self.padding
        if transpose:
            size = [(d - 1) * s[i] - 2 * p[i] + k[i] for i, d in enumerate(in_shape[1:])]
        else:
            size = [(d + 2 * p[i] - k[i]) // s[i] + 1 for i, d in enumerate(in_shape[1:])]
        return (self.out_channels, *size)

    return type(name, (_FakeLayer,), {"__init__": __init__, "out_shape": out_shape})


def _fake_pool(name, n):
    def __init__(self, kernel_size, stride=None, padding=0):
        _FakeLayer.__init__(self)
        self.kernel_size = _tuple(kernel_size, n)
        self.stride = self.kernel_size if stride is None else _tuple(stride, n)
        self.padding = _tuple(padding, n)

    def out_shape(self, in_shape):
        k, s, p = self.kernel_size, self.stride, self.padding
        return (in_shape[0], *[(d + 2 * p[i] - k[i]) // s[i] + 1 for i, d in enumerate(in_shape[1:])])

    return type(name, (_FakeLayer,), {"__init__": __init__, "out_shape": out_shape})


class _FakeAdaptiveAvgPool2d(_FakeLayer):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = _tuple(output_size, 2)

    def out_shape(self, in_shape):
        return (in_shape[0], *self.output_size)


_FakeAdaptiveAvgPool2d.__name__ = "AdaptiveAvgPool2d"

FAKES = {
    "Conv1d": _fake_conv("Conv1d", 1),
    "Conv2d": _fake_conv("Conv2d", 2),
    "Conv3d": _fake_conv("Conv3d", 3),
    "ConvTranspose2d": _fake_conv("ConvTranspose2d", 2, transpose=True),
    "MaxPool2d": _fake_pool("MaxPool2d", 2),
    "AvgPool2d": _fake_pool("AvgPool2d", 2),
    "AdaptiveAvgPool2d": _FakeAdaptiveAvgPool2d,
}


def layer(name):
    """kn.nn's layer when it exists, else the stand-in."""
    return getattr(nn, name, None) or FAKES[name]


def only_real(name):
    return pytest.mark.skipif(not hasattr(nn, name), reason=f"kn.nn.{name} does not exist yet")


# ---- fully connected ----


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def test_mlp_hand_computed():
    r = summary(mlp(), (4,), print_fn=None)
    got = [(l["name"], l["path"], l["output_shape"], l["params"], l["flops"]) for l in r["layers"]]
    assert got == [
        ("Linear-1", "0", (8,), 4 * 8 + 8, 8 * 4),
        ("BatchNorm1d-2", "1", (8,), 8 + 8, 8),
        ("ReLU-3", "2", (8,), 0, 8),
        ("Dropout-4", "3", (8,), 0, 8),
        ("Linear-5", "4", (3,), 8 * 3 + 3, 3 * 8),
    ]
    assert [l["output_shape_with_batch"] for l in r["layers"]] == [(1, 8)] * 4 + [(1, 3)]
    assert [l["memory_kb"] for l in r["layers"]] == [8 * KB] * 4 + [3 * KB]
    assert [l["buffers"] for l in r["layers"]] == [0, 16, 0, 0, 0]  # running mean and var
    assert r["total_params"] == 40 + 16 + 27
    assert r["total_flops"] == 32 + 8 + 8 + 8 + 24
    assert r["total_memory_kb"] == (4 * 8 + 3) * KB
    assert r["input_shape"] == (1, 4) and r["input_memory_kb"] == 4 * KB


def test_batch_size_scales_flops_and_memory_not_params():
    one, five = summary(mlp(), (4,), print_fn=None), summary(mlp(), (4,), batch_size=5, print_fn=None)
    assert five["total_params"] == one["total_params"]
    assert five["total_flops"] == 5 * one["total_flops"]
    assert five["total_memory_kb"] == 5 * one["total_memory_kb"]
    assert five["layers"][0]["output_shape"] == (8,)
    assert five["layers"][0]["output_shape_with_batch"] == (5, 8)


def test_float64_doubles_memory():
    m = nn.Sequential(nn.Linear(4, 8, dtype="float64"), nn.ReLU())
    r = summary(m, (4,), dtype="float64", print_fn=None)
    assert r["total_memory_kb"] == 2 * 8 * 8 / 1024
    assert r["input_memory_kb"] == 4 * 8 / 1024


def test_nested_sequential_and_module_list():
    m = nn.Sequential(
        nn.Linear(6, 5),
        nn.Sequential(nn.Tanh(), nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))),
        nn.ModuleList([nn.GELU(), nn.Linear(4, 2)]),
    )
    r = summary(m, (6,), print_fn=None)
    assert [(l["name"], l["path"]) for l in r["layers"]] == [
        ("Linear-1", "0"),
        ("Tanh-2", "1.0"),
        ("Linear-3", "1.1.0"),
        ("LayerNorm-4", "1.1.1"),
        ("GELU-5", "2.0"),
        ("Linear-6", "2.1"),
    ]
    assert [l["params"] for l in r["layers"]] == [35, 0, 24, 8, 0, 10]
    assert [l["flops"] for l in r["layers"]] == [30, 5, 20, 4, 4, 8]
    assert r["total_params"] == sum(math.prod(p.shape) for p in m.parameters()) == 77
    assert r["layers"][-1]["output_shape"] == (2,)


def test_flatten_and_identity_cost_nothing():
    r = summary(nn.Sequential(nn.Flatten(), nn.Identity(), nn.Linear(12, 2)), (3, 4), print_fn=None)
    assert [l["flops"] for l in r["layers"]] == [0, 0, 24]
    assert r["layers"][0]["output_shape"] == (12,)
    assert r["layers"][0]["memory_kb"] == 12 * KB  # a view still holds an output


def test_shared_layer_counted_once_in_total():
    shared = nn.Linear(4, 4)
    r = summary(nn.Sequential(shared, nn.ReLU(), shared), (4,), print_fn=None)
    assert [l["params"] for l in r["layers"]] == [20, 0, 20]
    assert r["total_params"] == 20
    assert r["total_flops"] == 16 + 4 + 16


class TwoLayerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(kn.relu(self.fc1(x)))


def test_non_sequential_model_is_one_layer():
    r = summary(TwoLayerNet(), (4,), batch_size=3, print_fn=None)
    (only,) = r["layers"]
    assert only["name"] == "TwoLayerNet-1" and only["path"] == "" and only["type"] == "TwoLayerNet"
    assert only["output_shape"] == (2,) and only["output_shape_with_batch"] == (3, 2)
    assert only["params"] == r["total_params"] == 40 + 18
    assert only["flops"] == 3 * 2  # unknown layer: 1 per output element
    assert only["memory_kb"] == 6 * KB


def test_bare_linear_model_counted_as_linear():
    r = summary(nn.Linear(10, 7), (10,), print_fn=None)
    assert r["total_flops"] == 7 * 10 and r["total_params"] == 77


class Residual(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class TwoHeads(nn.Module):
    def forward(self, x):
        return x[:, :2], x[:, 2:]


def test_container_with_own_forward_is_a_leaf_and_tuples_are_reported():
    m = nn.Sequential(nn.Linear(4, 5), Residual(nn.ReLU(), nn.Linear(5, 5)), TwoHeads())
    r = summary(m, (4,), print_fn=None)
    assert [l["name"] for l in r["layers"]] == ["Linear-1", "Residual-2", "TwoHeads-3"]
    assert r["layers"][1]["params"] == 30
    assert r["layers"][2]["output_shape"] == ((2,), (3,))
    assert r["layers"][2]["output_shape_with_batch"] == ((1, 2), (1, 3))
    assert r["layers"][2]["memory_kb"] == 5 * KB


def test_printed_table_has_rows_and_totals():
    lines = []
    r = summary(mlp(), (4,), print_fn=lines.append)
    text = "\n".join(lines)
    for l in r["layers"]:
        assert l["name"] in text
    assert "[1, 8]" in text
    assert "Total params: 83" in text
    assert "Total FLOPs: 80" in text
    assert f"Total activation memory: {35 * KB:,.2f} KB" in text


def test_print_fn_none_prints_nothing(capsys):
    summary(mlp(), (4,), print_fn=None)
    assert capsys.readouterr().out == ""
    summary(mlp(), (4,))
    assert "Total params: 83" in capsys.readouterr().out


def test_leaves_current_graph_alone_and_can_run_twice(fresh_graph):
    m = mlp()
    a, b = summary(m, (4,), print_fn=None), summary(m, (4,), print_fn=None)
    assert a == b
    assert kn.current_graph() is fresh_graph
    x = kn.input("summary_input_user", (2, 4))  # the model is still usable in its graph
    f = kn.function([x], [m(x)], training=False)
    assert f(np.ones((2, 4), np.float32))[0].shape == (2, 3)


def test_parameterless_model_uses_fresh_graph(fresh_graph):
    kn.input("summary_input", (1,))  # the name is taken in the current graph: no clash
    r = summary(nn.Sequential(nn.ReLU(), nn.Sigmoid()), (2, 3), print_fn=None)
    assert r["total_flops"] == 12 and r["total_params"] == 0


def test_bad_arguments():
    with pytest.raises(kn.Error, match="input_shape"):
        summary(mlp(), (None, 4), print_fn=None)
    with pytest.raises(kn.Error, match="batch_size"):
        summary(mlp(), (4,), batch_size=0, print_fn=None)
    with pytest.raises(kn.Error, match="not a kn.nn.Module"):
        summary(lambda x: x, (4,), print_fn=None)


# ---- convolutional: CS231n's AlexNet and VGG numbers ----


def test_alexnet_conv1_pool1():
    Conv2d, MaxPool2d = layer("Conv2d"), layer("MaxPool2d")
    m = nn.Sequential(Conv2d(3, 96, 11, stride=4), nn.ReLU(), MaxPool2d(3, stride=2))
    r = summary(m, (3, 227, 227), print_fn=None)
    conv, relu, pool = r["layers"]
    assert conv["name"] == "Conv2d-1" and conv["output_shape"] == (96, 55, 55)
    assert math.prod(conv["output_shape"]) == 290_400
    assert conv["params"] == 34_848 + 96  # 11*11*3 weights per filter, 96 filters, 96 biases
    assert conv["flops"] == 290_400 * 363 == 105_415_200
    assert conv["memory_kb"] == 290_400 * 4 / 1024
    assert relu["flops"] == 290_400
    assert pool["output_shape"] == (96, 27, 27)  # CS231n's POOL1
    assert pool["params"] == 0 and pool["flops"] == 27 * 27 * 96 * 9
    assert r["total_flops"] == 105_415_200 + 290_400 + 27 * 27 * 96 * 9
    assert r["input_memory_kb"] == 227 * 227 * 3 * 4 / 1024


def test_vgg_block1():
    Conv2d, MaxPool2d = layer("Conv2d"), layer("MaxPool2d")
    m = nn.Sequential(
        Conv2d(3, 64, 3, padding=1), nn.ReLU(), Conv2d(64, 64, 3, padding=1), nn.ReLU(), MaxPool2d(2, 2)
    )
    lines = []
    r = summary(m, (3, 224, 224), print_fn=lines.append)
    conv1, _, conv2, _, pool = r["layers"]
    out = 224 * 224 * 64
    assert out == 3_211_264
    assert conv1["output_shape"] == (64, 224, 224)
    assert conv1["params"] == 1_728 + 64  # CS231n: (3*3*3)*64 = 1,728 weights
    assert conv1["flops"] == 3_211_264 * 27
    assert conv1["memory_kb"] == out * 4 / 1024 == 12_544
    assert conv2["params"] == 36_864 + 64  # (3*3*64)*64
    assert conv2["flops"] == 3_211_264 * 576
    assert pool["output_shape"] == (64, 112, 112)  # CS231n's POOL2: 112x112x64 = 802,816
    assert pool["flops"] == 802_816 * 4 and pool["memory_kb"] == 802_816 * 4 / 1024
    assert r["total_params"] == 1_792 + 36_928
    assert r["total_memory_kb"] == (4 * out + 802_816) * 4 / 1024
    assert "Total params: 38,720" in "\n".join(lines)


def test_grouped_conv_uses_weight_shape():
    Conv2d = layer("Conv2d")
    r = summary(nn.Sequential(Conv2d(8, 16, 3, padding=1, groups=4)), (8, 5, 7), print_fn=None)
    (conv,) = r["layers"]
    assert conv["output_shape"] == (16, 5, 7)
    assert conv["params"] == 16 * 2 * 9 + 16
    assert conv["flops"] == 16 * 5 * 7 * (8 // 4) * 9


def test_conv_transpose_counts_input_elements():
    ConvT = layer("ConvTranspose2d")
    r = summary(nn.Sequential(ConvT(6, 4, 2, stride=2)), (6, 5, 7), print_fn=None)
    (up,) = r["layers"]
    assert up["output_shape"] == (4, 10, 14)
    assert up["params"] == 6 * 4 * 4 + 4
    assert up["flops"] == (6 * 5 * 7) * 4 * (2 * 2)  # each input element feeds out_channels * k*k


def test_adaptive_and_avg_pool():
    AvgPool2d, Adaptive = layer("AvgPool2d"), layer("AdaptiveAvgPool2d")
    r = summary(nn.Sequential(AvgPool2d(2), Adaptive(1)), (5, 8, 6), print_fn=None)
    avg, gap = r["layers"]
    assert avg["output_shape"] == (5, 4, 3) and avg["flops"] == 5 * 4 * 3 * 4
    assert gap["output_shape"] == (5, 1, 1) and gap["flops"] == 5 * 4 * 3  # one 4x3 window
    r = summary(nn.Sequential(Adaptive((2, 2))), (1, 5, 4), print_fn=None)
    assert r["total_flops"] == (3 + 3) * (2 + 2)  # torch's uneven windows: rows [0,3) and [2,5)


def test_conv1d_and_conv3d():
    Conv1d, Conv3d = layer("Conv1d"), layer("Conv3d")
    r = summary(nn.Sequential(Conv1d(2, 3, 5)), (2, 10), print_fn=None)
    assert r["layers"][0]["output_shape"] == (3, 6) and r["total_flops"] == 3 * 6 * 2 * 5
    r = summary(nn.Sequential(Conv3d(2, 3, 3, padding=1)), (2, 4, 4, 4), print_fn=None)
    assert r["layers"][0]["output_shape"] == (3, 4, 4, 4) and r["total_flops"] == 3 * 64 * 2 * 27


def test_batchnorm2d_is_one_op_per_element():
    r = summary(nn.Sequential(nn.BatchNorm2d(3)), (3, 4, 5), print_fn=None)
    (bn,) = r["layers"]
    assert bn["params"] == 6 and bn["buffers"] == 6 and bn["flops"] == 60


# ---- the real layers, once kn.nn has them ----


@only_real("Conv2d")
def test_real_conv2d_is_used_and_torch_shaped():
    conv = nn.Conv2d(3, 96, 11, stride=4)
    assert type(conv).__name__ == "Conv2d" and tuple(conv.weight.shape) == (96, 3, 11, 11)
    r = summary(nn.Sequential(conv), (3, 227, 227), print_fn=None)
    assert r["total_flops"] == 105_415_200 and r["total_params"] == 34_944


@only_real("Upsample")
def test_real_upsample_one_op_per_output():
    r = summary(nn.Sequential(nn.Upsample(scale_factor=2)), (3, 4, 5), print_fn=None)
    assert r["layers"][0]["output_shape"] == (3, 8, 10) and r["total_flops"] == 3 * 8 * 10


@only_real("MaxPool2d")
def test_real_pool_padding_and_stride():
    r = summary(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1)), (2, 7, 9), print_fn=None)
    assert r["layers"][0]["output_shape"] == (2, 4, 5) and r["total_flops"] == 2 * 4 * 5 * 9
