"""kn.summary: a per-layer table of output shapes, parameters, FLOPs and activation memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ._graph import DTypeLike, Error, Graph, Parameter, Tensor, current_graph
from ._graph import input as _input
from .nn.module import Module, ModuleList, Sequential

# Layers whose work is counted by a rule of their own (by class name, so that layers added to
# kn.nn later, or user layers with torch's names and attributes, are counted the same way).
_CONV = {"Conv1d", "Conv2d", "Conv3d"}
_CONV_TRANSPOSE = {"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
_POOL = {"MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d"}
_ADAPTIVE_POOL = {
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
}  # fmt: skip
_NO_COMPUTE = {"Identity", "Flatten", "Unflatten"}  # views: no arithmetic


def summary(
    model: Module,
    input_shape: int | Sequence[int],
    dtype: DTypeLike = "float32",
    batch_size: int = 1,
    print_fn: Callable[[str], Any] | None = print,
) -> dict:
    """Builds ``model`` symbolically on an input of shape ``(batch_size,) + input_shape`` and
    reports, per layer, the output shape, the parameter count, the FLOPs and the activation
    memory, and their totals. Nothing is computed: only the graph is built.

    Layers. A ``kn.nn.Sequential`` (and, recursively, a nested Sequential or ModuleList) is
    walked child by child, each leaf applied to the previous one's output; a container that
    defines its own ``forward`` (a residual block, a custom model) is one leaf. A model that is
    not a Sequential is one layer. Each layer is named torch-summary style, ``"Conv2d-1"``
    (class name and 1-based position), and by its dotted module path (``"features.0"``).

    Parameters. The number of elements of the layer's trainable parameters (its ``_parameters``
    and those of its submodules; weight and bias). Buffers (batch-norm running statistics) are
    reported apart, as ``"buffers"``, and not in the totals. ``total_params`` counts a
    parameter shared by several layers once.

    FLOPs, as the CS231n notes count them: output elements x operations per output element,
    a multiply-add counting as one operation and the bias add not counted:

    - Linear: ``in_features`` per output element.
    - Conv1d/2d/3d: ``(in_channels / groups) * prod(kernel_size)`` per output element, taken
      from the weight, shape ``(out, in / groups, *kernel)``: ``weight.shape[1] *
      prod(weight.shape[2:])``. AlexNet's CONV1 (96 filters 11x11x3 on 227x227x3) gives
      55*55*96 x 363 = 105,415,200.
    - ConvTranspose1d/2d/3d: the same formula over the *input* elements (each input element is
      scattered into ``(out_channels / groups) * prod(kernel_size)`` outputs; torch's weight
      shape ``(in, out / groups, *kernel)``).
    - MaxPool/AvgPool: ``prod(kernel_size)`` per output element; adaptive pooling: the exact
      sum of its (possibly uneven) window sizes.
    - Maxout: ``pieces * in_features`` per output element.
    - Identity, Flatten, Unflatten: 0 (views).
    - Everything else - batch norm, layer/group norm, activations, dropout, upsampling, and
      layers it does not know (including a whole non-Sequential model) - 1 per output element.

    Memory: the layer's output elements x bytes per element (of the output's dtype) / 1024, in
    KB, for the whole batch (per sample with the default ``batch_size=1``). The input itself is
    reported apart (``input_memory_kb``) and not in ``total_memory_kb``. FLOPs, too, are for the
    whole batch.

    The graph used is the one holding the model's parameters (a symbolic tensor cannot mix
    graphs), or a fresh ``kn.Graph()`` when the model has none; its input is named
    ``"summary_input"`` (with a numeric suffix if that name is taken). The added nodes are never
    run and do not change any function compiled from that graph.

    Args:
        model: a ``kn.nn.Module``.
        input_shape: the shape of one sample, without the batch dimension, e.g. ``(3, 32, 32)``.
        dtype: the input's dtype.
        batch_size: the batch dimension of the symbolic input.
        print_fn: called with each line of the table; None prints nothing.

    Returns:
        ``{"layers": [{"name", "path", "type", "output_shape" (without the batch dimension),
        "output_shape_with_batch", "params", "buffers", "flops", "memory_kb"}, ...],
        "total_params", "total_flops", "total_memory_kb", "input_shape" (with the batch
        dimension), "input_memory_kb"}``. A layer with several outputs has a tuple of shapes.
    """
    if not isinstance(model, Module):
        raise Error(f"summary: model is a {type(model).__name__}, not a kn.nn.Module")
    shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else tuple(input_shape)
    if any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0 for d in shape):
        raise Error(f"summary: input_shape must hold non-negative ints (no None), got {input_shape!r}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise Error(f"summary: batch_size must be a positive int, got {batch_size!r}")
    full_shape = (int(batch_size),) + tuple(int(d) for d in shape)

    layers: list[dict] = []
    seen_params: dict[int, int] = {}
    with _graph_of(model):
        x = _fresh_input(full_shape, dtype)
        input_memory_kb = _elements(x) * x.dtype.itemsize / 1024
        leaves = list(_leaves(model, "")) if _expands(model) else [("", model)]
        for i, (path, layer) in enumerate(leaves, 1):
            y = layer(x)
            layers.append(_record(f"{type(layer).__name__}-{i}", path, layer, x, y, seen_params))
            x = y

    result = {
        "layers": layers,
        "total_params": sum(seen_params.values()),
        "total_flops": sum(r["flops"] for r in layers),
        "total_memory_kb": sum(r["memory_kb"] for r in layers),
        "input_shape": full_shape,
        "input_memory_kb": input_memory_kb,
    }
    if print_fn is not None:
        for line in _table(result, np.dtype(dtype).name):
            print_fn(line)
    return result


# ---- building ----


def _graph_of(model: Module) -> Graph:
    for _, p in _tensors(model):
        return p._graph
    return Graph()


def _tensors(model: Module) -> Iterator[tuple[str, Parameter]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _fresh_input(shape: tuple, dtype: DTypeLike) -> Tensor:
    for k in range(1000):
        name = "summary_input" if k == 0 else f"summary_input_{k}"
        try:
            return _input(name, shape, dtype)
        except Error as e:
            if "already used" not in str(e):
                raise
    raise Error(f"summary: could not find a free input name in graph {current_graph()!r}")


def _expands(m: Module) -> bool:
    """A container walked child by child: a Sequential or ModuleList that keeps the base forward."""
    if isinstance(m, Sequential):
        return type(m).forward is Sequential.forward
    if isinstance(m, ModuleList):
        return type(m).forward is Module.forward
    return False


def _leaves(m: Module, prefix: str) -> Iterator[tuple[str, Module]]:
    for name, child in m.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if _expands(child):
            yield from _leaves(child, path)
        else:
            yield path, child


# ---- counting ----


def _outputs(y: Any) -> list[Tensor]:
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, (tuple, list)) and all(isinstance(t, Tensor) for t in y):
        return list(y)
    raise Error(f"summary: a layer returned a {type(y).__name__}, not a kn.Tensor or a tuple of them")


def _elements(t: Tensor) -> int:
    if any(d is None for d in t.shape):
        raise Error(f"summary: a layer output has an unknown size: shape {t.shape}")
    return math.prod(t.shape)


def _record(name: str, path: str, layer: Module, x: Any, y: Any, seen: dict[int, int]) -> dict:
    outs = _outputs(y)
    elements = sum(_elements(t) for t in outs)
    params = 0
    for p in layer.parameters():
        n = math.prod(p.shape)
        params += n
        seen[id(p)] = n
    shapes = [tuple(t.shape) for t in outs]
    single = isinstance(y, Tensor)
    return {
        "name": name,
        "path": path,
        "type": type(layer).__name__,
        "output_shape": shapes[0][1:] if single else tuple(s[1:] for s in shapes),
        "output_shape_with_batch": shapes[0] if single else tuple(shapes),
        "params": params,
        "buffers": sum(math.prod(b.shape) for b in layer.buffers()),
        "flops": _flops(layer, x, y, elements),
        "memory_kb": sum(_elements(t) * t.dtype.itemsize for t in outs) / 1024,
    }


def _ints(v: Any, n: int) -> tuple[int, ...]:
    return (int(v),) * n if isinstance(v, (int, np.integer)) else tuple(int(d) for d in v)


def _spatial_dims(kind: str, out: Tensor) -> int:
    return int(kind[-2]) if kind[-2:] in ("1d", "2d", "3d") else out.ndim - 2


def _flops(layer: Module, x: Any, y: Any, out_elements: int) -> int:
    kind = type(layer).__name__
    if kind in _NO_COMPUTE:
        return 0
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        return out_elements
    weight = getattr(layer, "weight", None)
    if kind == "Linear":
        in_features = weight.shape[1] if isinstance(weight, Tensor) else layer.in_features
        return out_elements * int(in_features)
    if kind in _CONV or kind in _CONV_TRANSPOSE:
        if isinstance(weight, Tensor):
            per_element = weight.shape[1] * math.prod(weight.shape[2:])
        else:  # from the hyperparameters
            n = _spatial_dims(kind, y)
            k = math.prod(_ints(layer.kernel_size, n))
            groups = int(getattr(layer, "groups", 1))
            side = layer.in_channels if kind in _CONV else layer.out_channels
            per_element = int(side) // groups * k
        return (out_elements if kind in _CONV else _elements(x)) * int(per_element)
    if kind in _POOL:
        return out_elements * math.prod(_ints(layer.kernel_size, _spatial_dims(kind, y)))
    if kind in _ADAPTIVE_POOL:
        n = _spatial_dims(kind, y)
        windows = math.prod(_adaptive_window_sum(i, o) for i, o in zip(x.shape[-n:], y.shape[-n:]))
        return math.prod(y.shape[:-n]) * windows
    if kind == "Maxout":
        return out_elements * int(layer.pieces) * int(layer.linear.in_features)
    return out_elements


def _adaptive_window_sum(size_in: int, size_out: int) -> int:
    """Total length of torch's adaptive-pooling windows [floor(i*in/out), ceil((i+1)*in/out))."""
    return sum(-(-(i + 1) * size_in // size_out) - (i * size_in // size_out) for i in range(size_out))


# ---- printing ----


def _table(result: dict, dtype_name: str) -> list[str]:
    def shape_str(s: tuple) -> str:
        if s and isinstance(s[0], tuple):
            return ", ".join(shape_str(t) for t in s)
        return "[" + ", ".join(str(d) for d in s) + "]"

    rows = [("Input", shape_str(result["input_shape"]), "0", "0", f"{result['input_memory_kb']:,.2f}")]
    for r in result["layers"]:
        label = r["name"] + (f" ({r['path']})" if r["path"] else "")
        rows.append(
            (
                label,
                shape_str(r["output_shape_with_batch"]),
                f"{r['params']:,}",
                f"{r['flops']:,}",
                f"{r['memory_kb']:,.2f}",
            )
        )
    head = ("Layer (type)", "Output Shape", "Param #", "FLOPs", "Memory (KB)")
    widths = [max(len(h), *(len(row[c]) for row in rows)) for c, h in enumerate(head)]

    def fmt(row: Sequence[str]) -> str:
        left = [row[c].ljust(widths[c]) for c in range(2)]
        right = [row[c].rjust(widths[c]) for c in range(2, 5)]
        return "  ".join(left + right)

    rule = "=" * len(fmt(head))
    total_kb = result["total_memory_kb"]
    return [
        rule,
        fmt(head),
        rule,
        *(fmt(row) for row in rows),
        rule,
        f"Total params: {result['total_params']:,}",
        f"Total FLOPs: {result['total_flops']:,} (a multiply-add counts 1; batch of {result['input_shape'][0]})",
        f"Total activation memory: {total_kb:,.2f} KB ({total_kb / 1024:,.2f} MB, {dtype_name})",
        f"Input memory: {result['input_memory_kb']:,.2f} KB",
        rule,
    ]
