"""kiln -> ONNX: an inference Function's optimised program, node by node, as an ONNX graph.

``export`` reads the compiled program (``Function._f.program()``: each node's op, typed attributes,
input edges and output specs, and the values of constants and variables), translates every kiln
op into standard ONNX nodes (one handler per op, below), writes the variables as initializers under
their kiln names, and keeps kiln's input and output names. A ``None`` first dimension of an input
becomes the symbolic dimension "batch", so one file serves every batch size.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .._graph import Error
from ..function import Function

# kiln dtype name -> ONNX element type.
ONNX_TYPES = {
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
}
FLOATS = ("float32", "float64", "float16", "bfloat16")
MIN_OPSET = 13
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_TWO_GB = 2**31 - 2**24  # protobuf's limit, less a margin: larger models keep their weights beside the file


class ExportError(Error):
    """A part of the program ONNX cannot express (an op, or an attribute value of one)."""


Spec = tuple[str, tuple]  # (dtype, shape with None for a symbolic dimension)


@dataclass
class _Record:
    """One ONNX node being built; turned into a NodeProto once every name is final."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Node:
    """What a handler sees of one kiln node: its attributes, the ONNX names of its inputs, their
    specs and its output specs (dtype, shape with None for symbolic dims)."""

    id: int
    op: str
    attrs: dict[str, Any]
    ins: list[str]
    in_edges: list[tuple[int, int]]
    in_specs: list[Spec]
    out_specs: list[Spec]
    site: str
    _used: Callable[[int], bool]

    def used(self, k: int) -> bool:
        """Whether output k of the node feeds anything (another node or an output)."""
        return self._used(k)


Handler = Callable[["_Exporter", Node], list]
HANDLERS: dict[str, Handler] = {}


def _handles(*ops: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for o in ops:
            HANDLERS[o] = fn
        return fn

    return register


def _np_dtype(dtype: str) -> np.dtype:
    if dtype == "bfloat16":
        raise ExportError("bfloat16 constants cannot be written from numpy")
    return np.dtype(dtype)


def _known(shape: Sequence) -> bool:
    return all(d is not None for d in shape)


class _Exporter:
    """Builds the ONNX graph of one program: records, initializers and the name of every kiln edge."""

    def __init__(self, program: dict, input_names: list[str], output_names: list[str], opset: int) -> None:
        self.program = program
        self.nodes: list[dict] = program["nodes"]
        self.opset = opset
        self.records: list[_Record] = []
        self.initializers: list[TensorProto] = []
        self.names: dict[tuple[int, int], str] = {}
        self.producer: dict[str, _Record] = {}
        self.taken: set[str] = set(input_names) | set(output_names)
        self.taken |= {n["name"] for n in self.nodes if n["op"] == "variable"}
        self._consts: dict[tuple, str] = {}
        self._shapes: dict[str, str] = {}
        self.uses: Counter = Counter()
        self.consumers: dict[tuple[int, int], list[int]] = {}
        for i, n in enumerate(self.nodes):
            for e in n["inputs"]:
                self.uses[tuple(e)] += 1
                self.consumers.setdefault(tuple(e), []).append(i)
        for e in program["outputs"]:
            self.uses[tuple(e)] += 1
        self.gemm_bias: dict[int, tuple[int, tuple[int, int]]] = {}  # add node -> (matmul node, bias edge)
        self.folded: set[int] = set()  # matmul nodes that became part of a Gemm
        self._plan_gemms()
        self.log_softmax: dict[int, tuple[tuple[int, int], int]] = {}  # sub node -> (x, axis)
        self.softmax: dict[int, tuple[tuple[int, int], int]] = {}  # exp node -> (x, axis)
        self._plan_softmax()

    # ---- names, constants, nodes ----

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name = f"{base}_{k}"
            k += 1
        self.taken.add(name)
        return name

    def const(self, value: Any, dtype: str | np.dtype | None = None, base: str = "const") -> str:
        """An initializer holding ``value`` (small ones shared); returns its name."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 64:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.array(arr, order="C"), name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), base="ints")

    def scalar(self, value: float, dtype: str) -> str:
        return self.const(np.asarray(value, dtype=_np_dtype(dtype)), base="scalar")

    def add(self, op_type: str, inputs: Sequence[str], attrs: dict[str, Any] | None = None, outputs: int = 1):
        """Appends an ONNX node; returns its output name (a list of names when outputs > 1)."""
        base = op_type.lower()
        outs = [
            self.fresh(f"{base}_{len(self.records)}" + (f"_{k}" if outputs > 1 else ""))
            for k in range(outputs)
        ]
        rec = _Record(op_type, list(inputs), outs, {k: v for k, v in (attrs or {}).items() if v is not None})
        self.records.append(rec)
        for o in outs:
            self.producer[o] = rec
        return outs if outputs > 1 else outs[0]

    def shape(self, x: str) -> str:
        """Shape(x), made once per value."""
        if x not in self._shapes:
            self._shapes[x] = self.add("Shape", [x])
        return self._shapes[x]

    def cast(self, x: str, dtype: str) -> str:
        return self.add("Cast", [x], {"to": ONNX_TYPES[dtype]})

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        """ReduceSum/Mean/Max/Min/Prod over ``axes`` (never empty): axes are an input from opset 13
        (ReduceSum) or 18 (the others), an attribute before."""
        axes = [int(a) for a in axes]
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.add(op_type, [x, self.ints(axes)], {"keepdims": int(keepdims)})
        return self.add(op_type, [x], {"axes": axes, "keepdims": int(keepdims)})

    def dims(self, x: str, shape: Sequence, pieces: Sequence[tuple[int, int] | int]) -> str:
        """A 1-d int64 shape made of ``pieces``: an int, or (i, j), the product of x's dims i..j-1;
        a constant where x's dims are known, else read with Shape at run time."""
        parts: list[str] = []
        static: list[int] = []
        for p in pieces:
            if isinstance(p, int):
                static.append(p)
                continue
            i, j = p
            if _known(shape[i:j]):
                static.append(int(np.prod(shape[i:j], dtype=np.int64)))
                continue
            if static:
                parts.append(self.ints(static))
                static = []
            s = self.add("Slice", [self.shape(x), self.ints([i]), self.ints([j])])
            parts.append(s if j - i == 1 else self.reduce("ReduceProd", s, [0], True))
        if static:
            parts.append(self.ints(static))
        return parts[0] if len(parts) == 1 else self.add("Concat", parts, {"axis": 0})

    def reshape(self, x: str, in_shape: Sequence, pieces: Sequence[tuple[int, int] | int]) -> str:
        """Reshape(x) to ``pieces`` (as ``dims``): a constant target where it can be one (0 copies
        a dimension at the same index, -1 takes the rest), else a shape computed at run time."""
        target: list[int] = []
        rest, empty = 0, False
        for k, p in enumerate(pieces):
            if isinstance(p, int) or _known(in_shape[p[0] : p[1]]):
                v = p if isinstance(p, int) else int(np.prod(in_shape[p[0] : p[1]], dtype=np.int64))
                empty = empty or v == 0
                target.append(v)
            elif p == (k, k + 1):
                target.append(0)
            else:
                target.append(-1)
                rest += 1
        if empty:  # a literal empty dimension: ONNX's 0 would copy the input's
            if self.opset < 14:
                raise ExportError(f"a reshape to an empty shape {target} needs opset 14 or newer")
            return self.add("Reshape", [x, self.dims(x, in_shape, pieces)], {"allowzero": 1})
        if rest <= 1:
            return self.add("Reshape", [x, self.ints(target)])
        return self.add("Reshape", [x, self.dims(x, in_shape, pieces)])

    # ---- matmul + bias -> Gemm ----

    def _spec(self, edge: Sequence[int]) -> Spec:
        dtype, shape = self.nodes[edge[0]]["outputs"][edge[1]]
        return dtype, tuple(shape)

    def _plan_gemms(self) -> None:
        for i, n in enumerate(self.nodes):
            if n["op"] != "add":
                continue
            for k in (0, 1):
                e, bias = tuple(n["inputs"][k]), tuple(n["inputs"][1 - k])
                m = self.nodes[e[0]]
                if m["op"] != "matmul" or e[0] in self.folded or self.uses[e] != 1:
                    continue
                dtype, shape = self._spec(e)
                if dtype not in ("float32", "float64") or len(shape) != 2 or shape[1] is None:
                    continue
                if any(len(self._spec(a)[1]) != 2 for a in m["inputs"]):
                    continue
                bdtype, bshape = self._spec(bias)
                if bdtype != dtype or tuple(n["outputs"][0][1]) != shape:
                    continue
                if bshape in ((), (1,), (1, 1), (shape[1],), (1, shape[1])):
                    self.gemm_bias[i] = (e[0], bias)
                    self.folded.add(e[0])
                    break

    # ---- kiln's composite log_softmax -> LogSoftmax, softmax -> Softmax ----

    def _plan_softmax(self) -> None:
        """kn.log_softmax(x) compiles to x - (log(sum(exp(x - m), axis, keepdims)) + m), m a shift
        of size 1 along the axis (the max, guarded); kn.softmax is its exp. Whatever m is, that is
        LogSoftmax(x, axis): the nodes between become dead and are dropped."""
        for i, n in enumerate(self.nodes):
            if n["op"] != "sub":
                continue
            x, lse = (tuple(e) for e in n["inputs"])
            add = self.nodes[lse[0]]
            if add["op"] != "add" or self._spec(x) != (n["outputs"][0][0], tuple(n["outputs"][0][1])):
                continue
            a, b = (tuple(e) for e in add["inputs"])
            for log, m in ((a, b), (b, a)):
                axis = self._lse_axis(x, log, m)
                if axis is not None:
                    self.log_softmax[i] = (x, axis)
                    break
        for i, n in enumerate(self.nodes):
            if n["op"] == "exp" and n["inputs"][0][0] in self.log_softmax:
                self.softmax[i] = self.log_softmax[n["inputs"][0][0]]

    def _lse_axis(self, x: tuple[int, int], log: tuple[int, int], m: tuple[int, int]) -> int | None:
        """The axis when ``log`` is log(sum(exp(x - m), [axis], keepdims)) and m is 1 along it."""
        dtype, shape = self._spec(x)
        if dtype not in FLOATS:
            return None
        chain = []
        e = log
        for op in ("log", "sum", "exp", "sub"):
            node = self.nodes[e[0]]
            if node["op"] != op:
                return None
            chain.append(node)
            e = tuple(node["inputs"][0])
        total, sub = chain[1], chain[3]
        axes = total["attrs"].get("axes", [])
        if len(axes) != 1 or not total["attrs"].get("keepdims", 0):
            return None
        axis = int(axes[0]) % len(shape)
        if [tuple(v) for v in sub["inputs"]] != [x, m]:
            return None
        mshape = self._spec(m)[1]
        if len(mshape) != len(shape) or mshape[axis] != 1:
            return None
        return axis

    # ---- the program ----

    def run(self) -> list[str]:
        """Translates every node; returns the problems met (empty when the export can proceed)."""
        problems: list[str] = []
        missing = Counter(n["op"] for n in self.nodes if n["op"] not in HANDLERS and n["op"] not in _SOURCES)
        for op, count in sorted(missing.items()):
            site = next(n["site"] for n in self.nodes if n["op"] == op)
            where = f" (at {site})" if site else ""
            times = f", {count} nodes" if count > 1 else ""
            hint = " (a gradient or training op: export an inference function)" if _training_op(op) else ""
            problems.append(f"op '{op}'{times}{where}: no ONNX translation{hint}")
        for i, n in enumerate(self.nodes):
            op = n["op"]
            if op in _SOURCES:
                self._source(i, n)
                continue
            if op not in HANDLERS or i in self.folded:
                continue
            edges = [tuple(e) for e in n["inputs"]]
            ins = [self.names.get(e, "") for e in edges]
            if any(not x and e[0] not in self.folded for x, e in zip(ins, edges)):
                continue  # fed by a node already reported
            node = Node(
                id=i,
                op=op,
                attrs=dict(n["attrs"]),
                ins=ins,
                in_edges=edges,
                in_specs=[self._spec(e) for e in edges],
                out_specs=[(d, tuple(s)) for d, s in n["outputs"]],
                site=n["site"],
                _used=lambda k, i=i: self.uses[(i, k)] > 0,
            )
            try:
                outs = HANDLERS[op](self, node)
            except ExportError as e:
                where = f" (at {n['site']})" if n["site"] else ""
                problems.append(f"node %{i} {op}{where}: {e}")
                continue
            for k, o in enumerate(outs):
                if o is not None:
                    self.names[(i, k)] = o
            for k in range(len(n["outputs"])):
                if self.uses[(i, k)] and (i, k) not in self.names:
                    problems.append(f"node %{i} {op}: output {k} is used but has no ONNX translation")
        return problems

    def _source(self, i: int, n: dict) -> None:
        if n["op"] == "input":
            self.names[(i, 0)] = n["name"]
        elif n["op"] == "variable":
            if n["value"] is None:
                raise ExportError(f"variable '{n['name']}' has no value")
            self.initializers.append(numpy_helper.from_array(np.array(n["value"], order="C"), n["name"]))
            self.names[(i, 0)] = n["name"]
        else:  # constant
            self.names[(i, 0)] = self.const(n["value"], base="const")

    def finish_outputs(self, output_names: list[str]) -> None:
        """Gives each output its kiln name: the producing node's output is renamed where it can be,
        else an Identity node copies the value under that name."""
        renamed: dict[str, str] = {}
        claimed: set[str] = set()
        for name, e in zip(output_names, self.program["outputs"]):
            src = self.names[tuple(e)]
            if src in self.producer and src not in claimed:
                renamed[src] = name
                claimed.add(src)
            else:
                rec = _Record("Identity", [src], [name])
                self.records.append(rec)
        for r in self.records:
            r.inputs = [renamed.get(x, x) for x in r.inputs]
            r.outputs = [renamed.get(x, x) for x in r.outputs]
        self._drop_dead(output_names)

    def _drop_dead(self, output_names: list[str]) -> None:
        """Drops the nodes and initializers no output depends on (what a fused pattern left)."""
        live = set(output_names)
        keep = []
        for r in reversed(self.records):
            if any(o in live for o in r.outputs):
                keep.append(r)
                live.update(x for x in r.inputs if x)
        self.records = keep[::-1]
        self.initializers = [t for t in self.initializers if t.name in live]


_SOURCES = ("input", "variable", "constant")


def _training_op(op: str) -> bool:
    return op.endswith("_grad") or op.endswith("_update")


# ---------------------------------------------------------------- the model


def _value_info(name: str, dtype: str, shape: Sequence, params: Sequence[str | None]) -> onnx.ValueInfoProto:
    dims: list[Any] = [d if d is not None else p for d, p in zip(shape, params)]
    vi = helper.make_tensor_value_info(name, ONNX_TYPES[dtype], dims)
    return vi


def _output_params(model: onnx.ModelProto) -> dict[str, list[str | None]]:
    """The symbolic dims ONNX's shape inference gives the outputs (from the inputs' "batch")."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a nicety here; the checker runs later
        return {}
    found: dict[str, list[str | None]] = {}
    for vi in list(inferred.graph.output) + list(inferred.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            found[vi.name] = [d.dim_param or None for d in vi.type.tensor_type.shape.dim]
    return found


def to_model(function: Function, opset: int = 17) -> onnx.ModelProto:
    """The ONNX model of an inference Function: its optimised program translated node by node,
    its variables as initializers. Raises kn.Error listing everything ONNX cannot express."""
    if not isinstance(function, Function):
        raise ExportError(f"kn.onnx.export: expected a compiled kn.Function, got {type(function).__name__}")
    if function.training:
        raise ExportError(
            "kn.onnx.export: the function was compiled with training=True; export an inference function: "
            "kn.function(inputs, outputs, training=False)"
        )
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise ExportError(f"kn.onnx.export: opset {opset}; kiln writes opsets {MIN_OPSET} to {max_opset}")
    core = function._f
    program = core.program()
    input_names, output_names = list(core.input_names), list(core.output_names)
    ex = _Exporter(program, input_names, output_names, opset)
    problems = ex.run()
    if problems:
        raise ExportError(
            f"kn.onnx.export: {len(problems)} part(s) of the program ONNX cannot express:\n  "
            + "\n  ".join(problems)
        )
    ex.finish_outputs(output_names)

    inputs = []
    for name, (dtype, shape) in zip(input_names, core.input_specs):
        params = ["batch" if i == 0 else f"{name}_dim{i}" for i in range(len(shape))]
        inputs.append(_value_info(name, dtype, shape, params))
    out_specs = list(core.output_specs)
    outputs = [_value_info(name, d, s, [None] * len(s)) for name, (d, s) in zip(output_names, out_specs)]
    nodes = [
        helper.make_node(r.op_type, r.inputs, r.outputs, name=r.outputs[0], **r.attrs) for r in ex.records
    ]
    graph = helper.make_graph(nodes, "kiln", inputs, outputs, initializer=ex.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="kiln",
        producer_version=_version(),
    )
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if any(None in s for _, s in out_specs):  # name the outputs' symbolic dims as inference finds them
        params = _output_params(model) if model.ByteSize() < _TWO_GB else {}
        for vi, (_, shape) in zip(model.graph.output, out_specs):
            found = params.get(vi.name)
            if found and len(found) == len(shape):
                for d, dim, p in zip(shape, vi.type.tensor_type.shape.dim, found):
                    if d is None and p:
                        dim.dim_param = p
    return model


def _version() -> str:
    from .. import __version__

    return __version__


def export(function: Function, path: str | os.PathLike, opset: int = 17) -> onnx.ModelProto:
    """Writes an inference Function (compiled with ``training=False``) and its weights to ``path``
    as an ONNX model of the given opset (13 or newer). Inputs and outputs keep kiln's names, the
    variables become initializers under theirs, and an input's ``None`` first dimension becomes the
    symbolic dimension "batch" (any other ``None`` dim is "<input>_dim<i>"): e.g. an input declared
    (None, 3, 32, 32) is (batch, 3, 32, 32) in the file, and the model runs at any batch size.

    The model passes ``onnx.checker.check_model`` before it is written; one over 2 GB keeps its
    weights in "<file name>.data" beside it. Returns the ModelProto. Raises kn.Error naming every op
    (or attribute value) that has no ONNX translation, all at once."""
    model = to_model(function, opset)
    path = os.fspath(path)
    if model.ByteSize() < _TWO_GB:
        onnx.checker.check_model(model)
        onnx.save(model, path)
    else:
        onnx.save(model, path, save_as_external_data=True, location=os.path.basename(path) + ".data")
        onnx.checker.check_model(path)
    return model


__all__ = ["export", "to_model", "HANDLERS", "ExportError"]


from . import _export_ops  # noqa: E402, F401  (fills HANDLERS; it imports the names above)
