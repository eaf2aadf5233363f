"""The op table (DESIGN.md section 9): its machinery and the core ops' entries.

Every entry of ``OPS`` names an op, builds it from symbolic inputs, and gives an independent numpy
reference that takes the same arrays. ``tests/test_ops.py`` drives the tests over the whole table;
``tests/op_table_nn.py`` adds the entries of the neural-network ops, layers and losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import kiln as kn

# ---------------------------------------------------------------------------------------------
# Inputs and cases
# ---------------------------------------------------------------------------------------------

FLOAT_KINDS = ("real", "pos", "away", "nz", "ties", "wide", "huge", "nan", "unit", "unit0")


@dataclass(frozen=True)
class In:
    """One input of a case: its shape and how its values are drawn.

    kind: real (N(0, 1)), pos (in [0.5, 2]), away (|x| in [0.1, 0.4] or [0.6, 1.8], random sign:
    away from the kinks 0 and +-0.5 of abs/relu/sign/clip), nz (|x| in [0.5, 2], random sign),
    ties (small integers as floats, so that comparisons see equal values), wide (N(0, 30**2)),
    huge (N(0, 1) + 1000), nan (N(0, 1) with a NaN in every row), unit (in [0.05, 0.95]: probabilities
    and binary targets), unit0 (unit with about a third exact zeros), int (integers in [low, high)), bool.
    A float kind takes the test's float dtype unless ``dtype`` is given.
    """

    shape: tuple
    kind: str = "real"
    dtype: str | None = None
    low: int = 0
    high: int = 0

    @property
    def is_float(self) -> bool:
        return self.kind in FLOAT_KINDS and (self.dtype is None or np.dtype(self.dtype).kind == "f")


def I(shape, kind="int", dtype="int64", low=0, high=5):  # noqa: E743
    """An integer (index) input with values in [low, high)."""
    return In(tuple(shape), kind, dtype, low, high)


def B(shape):
    """A bool input."""
    return In(tuple(shape), "bool", "bool")


def F(shape, kind="real", dtype=None):
    """A float input of the given kind."""
    return In(tuple(shape), kind, dtype)


@dataclass(frozen=True)
class Case:
    inputs: tuple
    kw: dict
    id: str
    grad: bool = True  # also gradient-checked (when the op is differentiable and the case is small)
    atol32: float | None = None  # the float32 forward tolerance, when the case needs its own
    grad_tol: float | None = None  # the gradient check's tolerance, when the case needs its own


def _shape_id(s: In) -> str:
    text = "x".join(map(str, s.shape)) if s.shape else "s"
    if s.kind != "real":
        text += f":{s.kind}"
    if s.dtype is not None and s.kind not in ("bool",):
        text += f":{s.dtype}"
    return text


def _kw_id(kw: dict) -> str:
    parts = []
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            v = f"arr{list(v.shape)}"
        parts.append(f"{k}={v}")
    return ",".join(parts)


def C(
    *inputs,
    grad: bool = True,
    id: str | None = None,
    atol32: float | None = None,
    grad_tol: float | None = None,
    **kw,
) -> Case:
    """A case: input shapes (a tuple, or an In for a non-default kind) and op keyword arguments."""
    ins = tuple(s if isinstance(s, In) else In(tuple(s)) for s in inputs)
    if id is None:
        id = "+".join(_shape_id(s) for s in ins)
        if kw:
            id += "-" + _kw_id(kw)
    return Case(ins, kw, id.replace(" ", ""), grad, atol32, grad_tol)


def make_input(spec: In, float_dtype: str, rng: np.random.Generator) -> np.ndarray:
    shape, kind = spec.shape, spec.kind
    dtype = spec.dtype or float_dtype
    if kind == "real":
        a = rng.standard_normal(shape)
    elif kind == "pos":
        a = rng.uniform(0.5, 2.0, shape)
    elif kind == "away":
        m = rng.uniform(0.1, 1.6, shape)
        a = np.where(m > 0.4, m + 0.2, m) * rng.choice([-1.0, 1.0], shape)
    elif kind == "nz":
        a = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif kind == "ties":
        a = rng.integers(-2, 3, shape).astype(np.float64)
    elif kind == "wide":
        a = rng.standard_normal(shape) * 30.0
    elif kind == "huge":
        a = rng.standard_normal(shape) + 1000.0
    elif kind == "nan":
        a = rng.standard_normal(shape)
        a[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = np.nan
    elif kind == "unit":
        a = rng.uniform(0.05, 0.95, shape)
    elif kind == "unit0":
        a = np.where(rng.random(shape) < 1 / 3, 0.0, rng.uniform(0.05, 0.95, shape))
    elif kind == "int":
        a = rng.integers(spec.low, spec.high, shape)
    elif kind == "bool":
        a = rng.random(shape) < 0.5
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(np.asarray(a).astype(dtype))


# ---------------------------------------------------------------------------------------------
# The op table
# ---------------------------------------------------------------------------------------------


@dataclass
class Op:
    """name: the table entry's id; build(*tensors, **kw) -> Tensor or list of Tensors;
    ref(*arrays, **kw) -> array or list of arrays (numpy, independent of kiln);
    cases: the input cases; grad: differentiable (gradient-checked in float64);
    dtypes: the float dtypes that float inputs take in the forward test;
    covers: the registered ops this entry builds directly (default: its name; () for an op composed
    in Python or C++ of other registered ops)."""

    name: str
    build: Callable[..., Any]
    ref: Callable[..., Any]
    cases: list[Case]
    grad: bool = True
    dtypes: tuple = ("float32", "float64")
    covers: tuple | None = None
    rtol32: float = 1e-5
    atol32: float = 1e-6
    grad_tol: float = 1e-6
    registered: tuple = field(init=False, default=())

    def __post_init__(self):
        self.registered = (self.name,) if self.covers is None else tuple(self.covers)


OPS: list[Op] = []


def op(name, build, ref, cases, **kw) -> None:
    OPS.append(Op(name, build, ref, cases, **kw))


# ---- elementwise binary ----

BINARY_CASES = [
    C((3, 4), (3, 4)),
    C((2, 3, 4), (4,)),  # broadcast a trailing vector
    C((3, 1), (1, 4)),  # both sides broadcast
    C((), (2, 3)),  # a scalar tensor
    C((2, 1, 3), (4, 1)),  # rank mismatch, both broadcast
    C((5,), ()),
    C((1,), (1,)),  # size 1
    C((1, 1), (3, 1)),
    C((0, 3), (3,)),  # size 0
    C((0, 3), (1, 3)),
    C((2, 0), (2, 1)),
]


def _binary_cases(kind_a="real", kind_b="real"):
    out = []
    for c in BINARY_CASES:
        a, b = c.inputs
        out.append(C(F(a.shape, kind_a), F(b.shape, kind_b)))
    return out


op("add", kn.add, np.add, _binary_cases())
op("sub", kn.sub, np.subtract, _binary_cases())
op("mul", kn.mul, np.multiply, _binary_cases())
op("div", kn.div, np.divide, _binary_cases("real", "nz"))
op("pow", kn.pow, np.power, _binary_cases("pos", "real"))
# negative bases with integral exponents (not exp(b * log(a))); forward only: d/db needs log(a)
op(
    "pow_negative_base",
    kn.pow,
    np.power,
    [C(F((3, 4), "nz"), F((3, 4), "ties")), C(F((2, 3), "real"), F((), "ties"))],
    grad=False,
    covers=("pow",),
)
op("maximum", kn.maximum, np.maximum, _binary_cases())
op("minimum", kn.minimum, np.minimum, _binary_cases())
op(
    "add_int",
    kn.add,
    np.add,
    [C(I((3, 4), low=-5), I((4,), low=-5)), C(I((2, 3), dtype="int32"), I((), dtype="int32"))],
    grad=False,
    covers=("add",),
)
op("mul_int", kn.mul, np.multiply, [C(I((3, 4), low=-5), I((3, 1), low=-5))], grad=False, covers=("mul",))
op(
    "maximum_int",
    kn.maximum,
    np.maximum,
    [C(I((3, 4), low=-5, dtype="int32"), I((4,), low=-5, dtype="int32"))],
    grad=False,
    covers=("maximum",),
)
op(
    "minimum_int",
    kn.minimum,
    np.minimum,
    [C(I((3, 4), low=-5), I((4,), low=-5))],
    grad=False,
    covers=("minimum",),
)

# Python operators and scalars (scalars adopt the tensor's dtype)
op("op_add", lambda a, b: a + b, lambda a, b: a + b, [C((2, 3), (3,))], covers=("add",))
op("op_sub", lambda a, b: a - b, lambda a, b: a - b, [C((2, 3), (2, 1))], covers=("sub",))
op("op_mul", lambda a, b: a * b, lambda a, b: a * b, [C((2, 3), ())], covers=("mul",))
op("op_div", lambda a, b: a / b, lambda a, b: a / b, [C((2, 3), F((3,), "nz"))], covers=("div",))
op("op_pow", lambda a, b: a**b, lambda a, b: a**b, [C(F((2, 3), "pos"), (2, 3))], covers=("pow",))
op("op_neg", lambda a: -a, lambda a: -a, [C((2, 3))], covers=("neg",))
op("op_abs", lambda a: abs(a), np.abs, [C(F((2, 3), "away"))], covers=("abs",))
op("scalar_radd", lambda a: 2.5 + a, lambda a: 2.5 + a, [C((2, 3)), C(())], covers=("add",))
op("scalar_rsub", lambda a: 1.5 - a, lambda a: 1.5 - a, [C((2, 3))], covers=("sub",))
op("scalar_mul", lambda a: a * 0.5, lambda a: a * 0.5, [C((2, 3))], covers=("mul",))
op("scalar_rdiv", lambda a: 2.0 / a, lambda a: 2.0 / a, [C(F((2, 3), "nz"))], covers=("div",))
op("scalar_div", lambda a: a / 4.0, lambda a: a / 4.0, [C((2, 3))], covers=("div",))
op("scalar_pow", lambda a: a**3.0, lambda a: a**3.0, [C((2, 3))], covers=("pow",))
op("scalar_sqrt_pow", lambda a: a**0.5, lambda a: a**0.5, [C(F((2, 3), "pos"))], covers=("pow",))
op("scalar_rpow", lambda a: 2.0**a, lambda a: 2.0**a, [C((2, 3))], covers=("pow",))
op(
    "scalar_int_add",
    lambda a: a + 3,
    lambda a: a + 3,
    [C(I((2, 3), dtype="int32"))],
    grad=False,
    covers=("add",),
)
op(
    "scalar_maximum",
    lambda a: kn.maximum(a, 0.25),
    lambda a: np.maximum(a, 0.25),
    [C(F((3, 4), "away"))],
    covers=("maximum",),
)

# ---- comparisons and logic ----

CMP_CASES = [
    C(F((3, 4), "ties"), F((3, 4), "ties")),
    C(F((2, 3, 4), "ties"), F((4,), "ties")),
    C(F((3, 1), "ties"), F((1, 4), "ties")),
    C(F((), "ties"), F((2, 3), "ties")),
    C(F((0, 3), "ties"), F((3,), "ties")),
    C(F((1,), "ties"), F((1,), "ties")),
    C(I((3, 4), low=-2, high=3), I((4,), low=-2, high=3)),
    C(I((3, 4), dtype="int32", low=-2, high=3), I((3, 1), dtype="int32", low=-2, high=3)),
]
for _name, _np in [
    ("eq", np.equal),
    ("ne", np.not_equal),
    ("lt", np.less),
    ("le", np.less_equal),
    ("gt", np.greater),
    ("ge", np.greater_equal),
]:
    op(_name, getattr(kn, _name), _np, CMP_CASES, grad=False)
op(
    "op_compare",
    lambda a, b: [a == b, a != b, a < b, a <= b, a > b, a >= b],
    lambda a, b: [a == b, a != b, a < b, a <= b, a > b, a >= b],
    [C(F((3, 4), "ties"), F((4,), "ties"))],
    grad=False,
    covers=("eq", "ne", "lt", "le", "gt", "ge"),
)
op(
    "op_compare_scalar",
    lambda a: [a == 1.0, a < 0.0, a >= 1.0],
    lambda a: [a == 1.0, a < 0.0, a >= 1.0],
    [C(F((3, 4), "ties"))],
    grad=False,
    covers=("eq", "lt", "ge"),
)

LOGIC_CASES = [
    C(B((3, 4)), B((3, 4))),
    C(B((2, 3)), B((3,))),
    C(B((3, 1)), B((1, 4))),
    C(B(()), B((2,))),
    C(B((0, 2)), B((2,))),
]
for _name in ("logical_and", "logical_or", "logical_xor"):
    op(_name, getattr(kn, _name), getattr(np, _name), LOGIC_CASES, grad=False)
op("logical_not", kn.logical_not, np.logical_not, [C(B((3, 4))), C(B(())), C(B((0,)))], grad=False)
op(
    "op_logic",
    lambda a, b: [a & b, a | b, a ^ b, ~a],
    lambda a, b: [a & b, a | b, a ^ b, ~a],
    [C(B((3, 4)), B((4,)))],
    grad=False,
    covers=("logical_and", "logical_or", "logical_xor", "logical_not"),
)

# ---- elementwise unary ----


def _unary_cases(kind="real"):
    return [
        C(F((3, 4), kind)),
        C(F((), kind)),
        C(F((2, 3, 4), kind)),
        C(F((1, 1, 1), kind)),
        C(F((0,), kind)),
        C(F((2, 0, 3), kind)),
    ]


def np_sigmoid(x):
    with np.errstate(over="ignore"):  # exp(100) overflows in float32; 1 / inf is the right 0
        return 1.0 / (1.0 + np.exp(-x))


def np_rsqrt(x):
    return 1.0 / np.sqrt(x)


def np_erf(x):
    return np.vectorize(math.erf, otypes=[x.dtype])(x)


def np_relu(x):
    return np.maximum(x, np.zeros((), x.dtype))


op("neg", kn.neg, np.negative, _unary_cases())
op("exp", kn.exp, np.exp, _unary_cases())
op("log", kn.log, np.log, _unary_cases("pos"))
op("sqrt", kn.sqrt, np.sqrt, _unary_cases("pos"))
op("rsqrt", kn.rsqrt, np_rsqrt, _unary_cases("pos"))
op("abs", kn.abs, np.abs, _unary_cases("away"))
op("sign", kn.sign, np.sign, _unary_cases("away") + [C(F((3, 4), "ties"), grad=False)])
op("square", kn.square, np.square, _unary_cases())
op("sigmoid", kn.sigmoid, np_sigmoid, _unary_cases() + [C(F((3, 4), "wide"), grad=False)])
op("tanh", kn.tanh, np.tanh, _unary_cases() + [C(F((3, 4), "wide"), grad=False)])
op("erf", kn.erf, np_erf, _unary_cases() + [C(F((3, 4), "wide"), grad=False)])
op("relu", kn.relu, np_relu, _unary_cases("away") + [C(F((3, 4), "ties"), grad=False)])
op("neg_int", kn.neg, np.negative, [C(I((3, 4), low=-5, dtype="int32"))], grad=False, covers=("neg",))
op("abs_int", kn.abs, np.abs, [C(I((3, 4), low=-5))], grad=False, covers=("abs",))
op("square_int", kn.square, np.square, [C(I((3, 4), low=-5))], grad=False, covers=("square",))
EXTREME = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], np.float32)
op(
    "sigmoid_extreme",
    lambda: kn.sigmoid(kn.constant(EXTREME)),
    lambda: np_sigmoid(EXTREME),
    [C(id="pm100")],
    grad=False,
    covers=("sigmoid",),
)

op(
    "clip",
    kn.clip,
    np.clip,
    [
        C(F((3, 4), "away"), min=-0.5, max=0.5),
        C(F((2, 3, 4), "away"), min=-0.5, max=0.5),
        C(F((), "away"), min=-0.5, max=0.5),
        C(F((0, 2), "away"), min=-0.5, max=0.5),
    ],
)
op(
    "clip_min",
    lambda x: kn.clip(x, min=0.5),
    lambda x: np.maximum(x, np.asarray(0.5, x.dtype)),
    [C(F((3, 4), "away"))],
    covers=("clip",),
)
op(
    "clip_max",
    lambda x: kn.clip(x, max=-0.5),
    lambda x: np.minimum(x, np.asarray(-0.5, x.dtype)),
    [C(F((3, 4), "away"))],
    covers=("clip",),
)

op(
    "where",
    kn.where,
    np.where,
    [
        C(B((3, 4)), (3, 4), (3, 4)),
        C(B((3, 1)), (1, 4), (3, 4)),
        C(B((2, 3)), (), (3,)),
        C(B(()), (2, 3), (2, 3)),
        C(B((0, 3)), (3,), (1, 3)),
        C(B((1,)), (1,), (1,)),
    ],
)
op(
    "where_scalar",
    lambda c, a: kn.where(c, a, 0.0),
    lambda c, a: np.where(c, a, np.zeros((), a.dtype)),
    [C(B((3, 4)), (3, 4))],
    covers=("where",),
)
op(
    "where_int",
    kn.where,
    np.where,
    [C(B((3, 4)), I((3, 4), low=-5), I((4,), low=-5))],
    grad=False,
    covers=("where",),
)
op(
    "where_cond_from_compare",
    lambda a, b: kn.where(a > b, a, b),
    np.maximum,
    [C((3, 4), (4,))],
    covers=("where", "gt"),
)


def _cast_case(kind, src, dst, shape=(3, 4)):
    spec = In(shape, kind, src, -5, 5) if kind in ("int", "bool") else F(shape, kind, src)
    return C(spec, dtype=dst, id=f"{src}->{dst}")


op(
    "cast",
    lambda x, dtype: kn.cast(x, dtype),
    lambda x, dtype: x.astype(dtype),
    [
        _cast_case("wide", "float32", "int32"),  # truncation toward zero, as numpy's astype
        _cast_case("wide", "float32", "int64"),
        _cast_case("real", "float32", "float64"),
        _cast_case("real", "float64", "float32"),
        _cast_case("ties", "float32", "bool"),
        _cast_case("int", "int64", "float32"),
        _cast_case("int", "int32", "float64"),
        _cast_case("int", "int64", "int32"),
        _cast_case("bool", "bool", "float32"),
        _cast_case("bool", "bool", "int64"),
        _cast_case("real", "float32", "float32"),
        _cast_case("real", "float32", "float64", shape=(0, 3)),
    ],
    grad=False,
)
op(
    "cast_f64",
    lambda x: kn.cast(x, "float64") * 2.0,
    lambda x: x.astype(np.float64) * 2.0,
    [C((3, 4)), C(())],
    dtypes=("float64",),
    covers=("cast",),
)
op(
    "astype",
    lambda x: x.astype("float64"),
    lambda x: x.astype(np.float64),
    [C((2, 3))],
    dtypes=("float32",),
    grad=False,
    covers=("cast",),
)
op("stop_gradient", kn.stop_gradient, lambda x: x, [C((3, 4)), C(())], grad=False)

# ---- reductions ----

REDUCE_CASES = [
    C((3, 4)),
    C((2, 3, 4), axis=0),
    C((2, 3, 4), axis=-1),
    C((2, 3, 4), axis=1, keepdims=True),
    C((2, 3, 4), axis=(0, 2)),
    C((2, 3, 4), axis=(-1, -3), keepdims=True),
    C((2, 3, 4), axis=(0, 1, 2)),
    C((2, 3, 4), keepdims=True),
    C(()),
    C((5,), axis=0),
    C((1, 1), axis=1),
    C((4, 1), axis=-1, keepdims=True),
]
EMPTY_REDUCE_CASES = [C((0, 3), axis=0), C((0, 3)), C((3, 0), axis=0), C((2, 0), axis=-1, keepdims=True)]

op("sum", kn.sum, np.sum, REDUCE_CASES + EMPTY_REDUCE_CASES)
op("mean", kn.mean, np.mean, REDUCE_CASES + [C((3, 0), axis=0)])
op(
    "prod",
    kn.prod,
    np.prod,
    [C(F(c.inputs[0].shape, "nz"), **c.kw) for c in REDUCE_CASES + EMPTY_REDUCE_CASES],
)
op("max", kn.max, np.max, REDUCE_CASES + [C((3, 0), axis=0)])
op("min", kn.min, np.min, REDUCE_CASES + [C((3, 0), axis=0)])
op(
    "sum_int",
    kn.sum,
    np.sum,
    [
        C(I((3, 4), low=-5)),
        C(I((2, 3), dtype="int32"), axis=0),
        C(B((3, 4)), axis=1),
    ],
    grad=False,
    covers=("sum",),
)
# kiln sums every integer dtype to int64 (as torch; numpy sums uint8 to uint64)
op(
    "sum_uint8",
    kn.sum,
    lambda x, **kw: np.sum(x, dtype=np.int64, **kw),
    [C(I((2, 3), dtype="uint8", high=255), axis=-1), C(I((300,), dtype="uint8", high=255))],
    grad=False,
    covers=("sum",),
)
op(
    "mean_int",
    kn.mean,
    np.mean,
    [C(I((3, 4), low=-5), axis=1), C(I((2, 3), dtype="int32"))],
    grad=False,
    covers=("mean",),
)
op(
    "max_int",
    kn.max,
    np.max,
    [C(I((3, 4), low=-9, high=9), axis=0), C(I((2, 3), dtype="int32", low=-9, high=9))],
    grad=False,
    covers=("max",),
)
op(
    "min_int",
    kn.min,
    np.min,
    [C(I((3, 4), low=-9, high=9), axis=-1, keepdims=True)],
    grad=False,
    covers=("min",),
)
op(
    "sum_method",
    lambda x: x.sum(axis=1) + x.mean(axis=1) * x.max(axis=1) - x.min(axis=1),
    lambda x: x.sum(axis=1) + x.mean(axis=1) * x.max(axis=1) - x.min(axis=1),
    [C((3, 4))],
    covers=("sum", "mean", "max", "min"),
)

VAR_CASES = REDUCE_CASES[:8] + [
    C((3, 4), axis=1, ddof=1),
    C((2, 3, 4), axis=(0, 2), ddof=1, keepdims=True),
    C((1, 3), axis=0),  # a single sample: variance 0
]
op("var", kn.var, np.var, VAR_CASES, covers=())
op(
    "std",
    kn.std,
    np.std,
    [c for c in VAR_CASES if c.inputs[0].shape != (1, 3)] + [C((1, 3), axis=0, grad=False)],
    covers=(),
)


def np_logsumexp(x, axis=None, keepdims=False):
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x64 - m), axis=axis, keepdims=True)) + m
    if not keepdims:
        out = np.squeeze(out, axis=axis) if axis is not None else out.reshape(())
    return out.astype(x.dtype)


op(
    "logsumexp",
    kn.logsumexp,
    np_logsumexp,
    REDUCE_CASES[:8]
    + [
        C(F((3, 4), "huge"), axis=1, grad=False),  # stable: no overflow
        C(F((3, 4), "wide"), axis=0, grad=False),
        C((1, 5), axis=0),
    ],
    covers=(),
)


def _argcases():
    return [
        C((3, 4)),
        C((3, 4), axis=0),
        C((3, 4), axis=1),
        C((2, 3, 4), axis=-2),
        C((2, 3, 4), axis=2, keepdims=True),
        C((2, 3, 4), keepdims=True),
        C((5,), axis=0),
        C((1, 1), axis=1),
        C(F((4, 6), "ties"), axis=1, id="ties-first"),
        C(I((4, 6), low=0, high=3), axis=0, id="int-ties-first"),
    ]


op("argmax", kn.argmax, np.argmax, _argcases(), grad=False)
op("argmin", kn.argmin, np.argmin, _argcases(), grad=False)


def np_topk(x, k, axis=-1, largest=True):
    """The reference ranking, by a stable sort: NaN above every number (first among the largest,
    last among the smallest), equal values in index order."""
    x = np.moveaxis(x, axis, -1)
    nan = np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
    filled = np.where(nan, 0, x)
    order = np.lexsort((-filled, ~nan) if largest else (filled, nan), axis=-1)[..., :k]
    values = np.take_along_axis(x, order, axis=-1)
    return [np.moveaxis(values, -1, axis), np.moveaxis(order.astype(np.int64), -1, axis)]


def _topk_cases():
    return [
        C((3, 8), k=3),
        C((3, 8), k=3, largest=False),
        C((4, 5, 6), k=2, axis=1),
        C((4, 5, 6), k=6, axis=-1, id="whole-row-sorted"),
        C((5, 3, 2), k=4, axis=0, largest=False),
        C((3, 300), k=5, id="long-rows"),
        C((1,), k=1),
        C((2, 5), k=0, grad=False),
        C(F((4, 6), "ties"), k=4, grad=False, id="ties-lower-index-first"),
        C(F((4, 6), "ties"), k=5, largest=False, grad=False, id="ties-smallest"),
        C(F((5, 6), "nan"), k=3, grad=False, id="nan-ranks-first"),
        C(F((5, 6), "nan"), k=6, largest=False, grad=False, id="nan-ranks-last-of-smallest"),
        C(I((4, 6), low=0, high=3), k=2, id="int-ties"),
    ]


op("topk", kn.topk, np_topk, _topk_cases(), grad=False)
op(  # the values alone, gradient-checked: each goes back to the entry it came from
    "topk_values",
    lambda x, **kw: kn.topk(x, **kw)[0],
    lambda x, **kw: np_topk(x, **kw)[0],
    [c for c in _topk_cases() if c.grad and c.inputs[0].kind == "real"],
    covers=("topk",),
)


def np_softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


SOFTMAX_CASES = [
    C((3, 4)),
    C((2, 3, 4), axis=1),
    C((2, 3, 4), axis=0),
    C((2, 3, 4), axis=-3),
    C((4, 1)),
    C((5,)),
    C((0, 3)),
    # inputs near 1000 hold only ~6e-5 absolute precision in float32: the outputs may be off by as
    # much (float64 checks the same case tightly)
    C(F((3, 4), "huge"), grad=False, atol32=1e-4),
    C(F((3, 4), "wide"), grad=False),
]
op("softmax", kn.softmax, np_softmax, SOFTMAX_CASES, covers=())
op("log_softmax", kn.log_softmax, np_log_softmax, SOFTMAX_CASES, covers=())

# ---- linear algebra ----

op(
    "matmul",
    kn.matmul,
    np.matmul,
    [
        C((3, 4), (4, 5)),
        C((4,), (4, 5)),  # 1-d rules
        C((3, 4), (4,)),
        C((4,), (4,)),
        C((2, 3, 4), (4, 5)),  # batched
        C((2, 3, 4), (2, 4, 5)),
        C((4,), (2, 4, 3)),
        C((2, 3, 4), (4,)),
        C((2, 1, 3, 4), (5, 4, 2)),  # batch dims broadcast
        C((1, 1), (1, 1)),
        C((1, 4), (4, 1)),
        C((0, 4), (4, 3)),  # size 0
        C((3, 0), (0, 4)),  # empty contraction: zeros
        C((2, 0, 4), (4, 3)),
    ],
)
op("op_matmul", lambda a, b: a @ b, lambda a, b: a @ b, [C((3, 4), (4, 2))], covers=("matmul",))
op(
    "matmul_int",
    kn.matmul,
    np.matmul,
    [C(I((3, 4), low=-3), I((4, 2), low=-3))],
    grad=False,
    covers=("matmul",),
)

op(
    "transpose",
    kn.transpose,
    lambda x, dim0=-2, dim1=-1: np.swapaxes(x, dim0, dim1),
    [
        C((3, 4)),
        C((2, 3, 4)),
        C((2, 3, 4), dim0=0, dim1=2),
        C((2, 3, 4), dim0=-1, dim1=0),
        C((0, 3)),
        C((1, 5)),
    ],
    covers=("permute",),
)
op(
    "permute",
    lambda x, dims: kn.permute(x, dims),
    lambda x, dims: np.transpose(x, dims),
    [
        C((2, 3, 4), dims=(2, 0, 1)),
        C((2, 3, 4), dims=(0, 2, 1)),
        C((2, 3, 4, 5), dims=(3, 1, 0, 2)),
        C((3, 4), dims=(1, 0)),
        C((4,), dims=(0,)),
        C((2, 0, 3), dims=(1, 2, 0)),
        C((1, 2, 1), dims=(2, 1, 0)),
    ],
)
op("dot_T", lambda x: x.T, lambda x: x.T, [C((3, 4)), C((2, 3, 4)), C((5,)), C(())], covers=("permute",))
op(
    "permute_int",
    lambda x: kn.permute(x, 1, 0),
    lambda x: x.T,
    [C(I((3, 4)))],
    grad=False,
    covers=("permute",),
)

# ---- shape ----

op(
    "reshape",
    lambda x, shape: kn.reshape(x, shape),
    np.reshape,
    [
        C((2, 3, 4), shape=(6, 4)),
        C((2, 3, 4), shape=(-1,)),
        C((2, 3, 4), shape=(4, -1, 2)),
        C((), shape=(1, 1)),
        C((1,), shape=()),
        C((0, 3), shape=(3, 0)),
        C((0, 3), shape=(-1, 3)),
        C((6,), shape=(2, 3)),
    ],
)
op(
    "reshape_method",
    lambda x: x.reshape(3, 4).view(-1, 6),
    lambda x: x.reshape(3, 4).reshape(-1, 6),
    [C((12,))],
    covers=("reshape",),
)
op(
    "reshape_int",
    lambda x: kn.reshape(x, (3, 2)),
    lambda x: x.reshape(3, 2),
    [C(B((2, 3))), C(I((6,)))],
    grad=False,
    covers=("reshape",),
)


def np_flatten(x, start_dim=1, end_dim=-1):
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (int(np.prod(x.shape[s : e + 1])),) + x.shape[e + 1 :])


op(
    "flatten",
    kn.flatten,
    np_flatten,
    [
        C((2, 3, 4)),
        C((2, 3, 4, 5)),
        C((2, 3, 4), start_dim=0),
        C((2, 3, 4, 5), start_dim=1, end_dim=2),
        C((2, 3, 4, 5), start_dim=-3, end_dim=-2),
        C((2, 1)),
        C((0, 3, 2)),
        C((3, 0, 2)),
    ],
)


def np_squeeze(x, axis=None):
    return np.squeeze(x, axis=axis)


op(
    "squeeze",
    kn.squeeze,
    np_squeeze,
    [
        C((1, 3, 1, 4)),
        C((1, 3, 1, 4), axis=0),
        C((1, 3, 1, 4), axis=-2),
        C((1, 3, 1, 4), axis=(0, 2)),
        C((1,)),
        C((1, 1)),
        C((3, 4)),
        C((0, 1), axis=1),
    ],
)
op(
    "unsqueeze",
    kn.unsqueeze,
    np.expand_dims,
    [
        C((3, 4), axis=0),
        C((3, 4), axis=1),
        C((3, 4), axis=2),
        C((3, 4), axis=-1),
        C((3, 4), axis=-3),
        C((), axis=0),
        C((0, 2), axis=1),
    ],
)
op(
    "broadcast_to",
    kn.broadcast_to,
    np.broadcast_to,
    [
        C((3, 1), shape=(2, 3, 4)),
        C((), shape=(2, 2)),
        C((4,), shape=(3, 4)),
        C((1, 1), shape=(1, 1)),
        C((1, 4), shape=(0, 4)),
        C((2, 3), shape=(2, 3)),
        C((2, 1, 3), shape=(5, 2, 4, 3)),
    ],
)


def np_broadcast_keep(x, shape):
    """kn.broadcast_to's -1: keep x's size there (aligned from the right)."""
    lead = len(shape) - x.ndim
    return np.broadcast_to(x, [x.shape[i - lead] if d == -1 else d for i, d in enumerate(shape)])


op(
    "broadcast_to_keep",
    kn.broadcast_to,
    np_broadcast_keep,
    [C((3, 1), shape=(2, -1, 4)), C((2, 3), shape=(-1, -1))],
    covers=("broadcast_to",),
)
op(
    "broadcast_to_int",
    kn.broadcast_to,
    np.broadcast_to,
    [C(B((3, 1)), shape=(3, 4)), C(I((1,)), shape=(2, 3))],
    grad=False,
    covers=("broadcast_to",),
)


def _many(build):
    return lambda *xs, **kw: build(list(xs), **kw)


op(
    "concat",
    _many(kn.concat),
    _many(np.concatenate),
    [
        C((2, 3), (4, 3)),
        C((2, 3), (2, 5), axis=1),
        C((2, 3), (2, 1), (2, 2), axis=-1),
        C((2, 3, 4), (2, 3, 1), axis=2),
        C((0, 3), (2, 3)),
        C((2, 0), (2, 3), axis=1),
        C((1,), (1,), (1,)),
        C(
            (3,),
        ),
    ],
)
op(
    "concat_int",
    _many(kn.concat),
    _many(np.concatenate),
    [C(I((2, 3)), I((1, 3))), C(B((2,)), B((3,)))],
    grad=False,
    covers=("concat",),
)
op(
    "stack",
    _many(kn.stack),
    _many(np.stack),
    [
        C((2, 3), (2, 3)),
        C((2, 3), (2, 3), (2, 3), axis=1),
        C((2, 3), (2, 3), axis=-1),
        C((2, 3), (2, 3), axis=2),
        C((), ()),
        C((0, 2), (0, 2)),
        C(
            (3,),
        ),
    ],
    covers=(),
)


def np_split(x, split_size_or_sections, axis=0):
    n = x.shape[axis]
    if isinstance(split_size_or_sections, int):
        bounds = list(range(split_size_or_sections, n, split_size_or_sections))
    else:
        bounds = list(np.cumsum(split_size_or_sections)[:-1])
    return np.split(x, bounds, axis=axis)


op(
    "split",
    kn.split,
    np_split,
    [
        C((6, 3), split_size_or_sections=2),
        C((7, 3), split_size_or_sections=3),  # last chunk smaller
        C((2, 5), split_size_or_sections=[1, 4], axis=1),
        C((2, 3, 5), split_size_or_sections=[2, 0, 3], axis=-1),
        C((4,), split_size_or_sections=4),
        C((4,), split_size_or_sections=1),
        C((3, 4), split_size_or_sections=5),
    ],
)


def np_pad(x, pad, value=0.0):
    pairs = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        pairs[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    crop = tuple(slice(-b if b < 0 else 0, n + a if a < 0 else n) for (b, a), n in zip(pairs, x.shape))
    return np.pad(x[crop], [(max(b, 0), max(a, 0)) for b, a in pairs], constant_values=value)


op(
    "pad",
    kn.pad,
    np_pad,
    [
        C((3, 4), pad=(1, 1)),
        C((2, 3, 4), pad=(1, 2, 0, 3)),
        C((2, 3, 4), pad=(1, 1, 1, 1, 1, 1)),
        C((3, 4), pad=(2, 0), value=2.5),
        C((3, 5), pad=(-1, 1, 1, -2)),
        C((0, 2), pad=(1, 1)),
        C((2, 0), pad=(1, 2)),
        C((1,), pad=(0, 0)),
        C((2, 3, 4, 5), pad=(1, 1, 2, 2)),
    ],
)
op(
    "pad_int",
    lambda x: kn.pad(x, (1, 2), value=7),
    lambda x: np.pad(x, ((0, 0), (1, 2)), constant_values=7),
    [C(I((2, 3)))],
    grad=False,
    covers=("pad",),
)

# ---- slicing ----

A = np.array


def _key_case(shape, key, id, grad=True):
    return C(shape, key=key, id=id, grad=grad)


op(
    "getitem",
    lambda x, key: x[key],
    lambda x, key: x[key],
    [
        _key_case((5, 4), 1, "int"),
        _key_case((5, 4), -1, "neg_int"),
        _key_case((5, 4), (2, -3), "two_ints"),
        _key_case((5, 4), slice(1, 3), "slice"),
        _key_case((5, 4), slice(None, None, 2), "step2"),
        _key_case((5, 4), slice(None, None, -1), "reverse"),
        _key_case((7, 4), slice(5, 0, -2), "neg_step"),
        _key_case((7, 4), slice(-2, None, -3), "neg_start_neg_step"),
        _key_case((5, 4), (slice(1, None), slice(None, -1)), "two_slices"),
        _key_case((5, 4), (slice(None), slice(3, 0, -1)), "reverse_inner"),
        _key_case((5, 4), slice(3, 100), "stop_past_end"),
        _key_case((5, 4), slice(-100, 2), "start_before_begin"),
        _key_case((5, 4), slice(3, 1), "empty", grad=False),
        _key_case((5, 4), slice(8, 10), "empty_past_end", grad=False),
        _key_case((2, 3, 4), (Ellipsis, 1), "ellipsis_int"),
        _key_case((2, 3, 4), (0, Ellipsis), "int_ellipsis"),
        _key_case((2, 3, 4), (slice(None), None, 1), "none_int"),
        _key_case((2, 3, 4), (None, Ellipsis, None), "none_ellipsis_none"),
        _key_case((2, 3, 4), None, "none"),
        _key_case((2, 3, 4), (1, slice(None, None, -2), slice(1, 3)), "int_revstep_slice"),
        _key_case((2, 3, 4), Ellipsis, "ellipsis"),
        _key_case((), Ellipsis, "scalar_ellipsis"),
        _key_case((), None, "scalar_none"),
        _key_case((5, 4), [0, 2, 2], "list"),
        _key_case((5, 4), A([-1, 0]), "neg_array"),
        _key_case((5, 4), (slice(None), A([3, 0, 3])), "array_axis1"),
        _key_case((5, 4), A([[0, 1], [4, 4]]), "array_2d"),
        _key_case((2, 3, 4), (1, A([2, 0])), "int_then_array"),
        _key_case((2, 3, 4), (A([1, 0, 1]), slice(1, None)), "array_then_slice"),
        _key_case((2, 3, 4), (Ellipsis, A([3, 1])), "ellipsis_array"),
        _key_case((2, 3, 4), (slice(None), A([[0, 1], [2, 2]]), slice(None, None, 2)), "slice_2darray_step"),
        _key_case((2, 3, 4), (slice(None), slice(None), A([], np.int64)), "empty_array", grad=False),
        # the same integer-array keys given as (nested) lists
        _key_case((5, 4), [-1, 0], "neg_list"),
        _key_case((5, 4), (slice(None), [3, 0, 3]), "list_axis1"),
        _key_case((5, 4), [[0, 1], [4, 4]], "list_2d"),
        _key_case((2, 3, 4), (1, [2, 0]), "int_then_list"),
        _key_case((2, 3, 4), ([1, 0, 1], slice(1, None)), "list_then_slice"),
        _key_case((2, 3, 4), (Ellipsis, [3, 1]), "ellipsis_list"),
        _key_case((2, 3, 4), (slice(None), [[0, 1], [2, 2]], slice(None, None, 2)), "slice_2dlist_step"),
        _key_case((0, 3), (slice(None), 1), "size0"),
        _key_case((1, 1), (0, 0), "size1"),
    ],
    covers=("slice", "take", "squeeze", "unsqueeze"),
)
op(
    "getitem_tensor_index",
    lambda x, i: x[:, i],
    lambda x, i: x[:, i],
    [C((3, 5), I((4,), low=-5, high=5)), C((3, 5), I((2, 2), dtype="int32", high=5))],
    covers=("take",),
)

# ---- indexing ----

op(
    "take",
    lambda x, idx, axis=0: kn.take(x, idx, axis),
    lambda x, idx, axis=0: np.take(x, idx, axis=axis),
    [
        C((5, 3), I((4,), low=-5, high=5)),  # negative indices count from the end
        C((3, 5), I((2, 3), high=5), axis=1),  # an index array of rank 2
        C((2, 3, 4), I((3,), dtype="int32", high=4), axis=-1),
        C((5,), I((), high=5)),  # a scalar index drops the axis
        C((5, 3), I((7,), high=2)),  # repeated indices: gradients accumulate
        C((5, 3), I((0,), high=5)),
        C((0, 3), I((2,), high=3), axis=1),
        C((1, 1), I((1,), high=1)),
    ],
)
op(
    "take_const",
    lambda x: kn.take(x, [2, 0, 2], axis=1),
    lambda x: np.take(x, [2, 0, 2], axis=1),
    [C((2, 3))],
    covers=("take",),
)
op(
    "index_select",
    lambda x, idx, dim: kn.index_select(x, dim, idx),
    lambda x, idx, dim: np.take(x, idx, axis=dim),
    [
        C((5, 3), I((4,), high=5), dim=0),
        C((3, 5), I((6,), high=5), dim=1),
        C((2, 3, 4), I((2,), high=4), dim=-1),
        C((2, 3), I((0,), high=3), dim=1),
    ],
    covers=("take",),
)


def np_gather(x, dim, index):
    """torch.gather: out[i][j] = x[index[i][j]][j] (dim 0); index may be smaller than x off ``dim``."""
    d = dim % x.ndim
    crop = tuple(slice(None) if a == d else slice(0, index.shape[a]) for a in range(x.ndim))
    return np.take_along_axis(x[crop], index, axis=d)


op(
    "gather",
    lambda x, idx, dim: kn.gather(x, dim, idx),
    lambda x, idx, dim: np_gather(x, dim, idx),
    [
        C((3, 4), I((3, 4), high=3), dim=0),
        C((3, 4), I((3, 6), high=4), dim=1),
        C((2, 3, 4), I((2, 3, 2), high=4), dim=-1),
        C((3, 4), I((2, 3), high=4), dim=1),  # index smaller than x off dim (torch semantics)
        C((4, 3), I((2, 2), high=4), dim=0),
        C((3, 4), I((3, 0), high=4), dim=1),
        C((1, 1), I((1, 1), high=1), dim=0),
    ],
)
op(
    "take_along_axis",
    lambda x, idx, axis: kn.take_along_axis(x, idx, axis),
    lambda x, idx, axis: np.take_along_axis(x, idx, axis=axis),
    [C((3, 4), I((3, 2), high=4), axis=1), C((3, 4), I((5, 4), high=3), axis=0)],
    covers=("gather",),
)
op(
    "take_along_axis_argmax",
    lambda x: kn.take_along_axis(x, kn.argmax(x, axis=1, keepdims=True), 1),
    lambda x: np.take_along_axis(x, np.argmax(x, axis=1, keepdims=True), axis=1),
    [C((3, 5))],
    covers=("gather", "argmax"),
)


def np_one_hot(idx, num_classes, dtype="float32"):
    return np.eye(num_classes, dtype=dtype)[idx]


op(
    "one_hot",
    lambda i, **kw: kn.one_hot(i, **kw),
    np_one_hot,
    [
        C(I((5,), high=4), num_classes=4),
        C(I((2, 3), high=3), num_classes=3),
        C(I((0,), high=3), num_classes=3),
        C(I((), high=5), num_classes=5),
        C(I((4,), dtype="int32", high=6), num_classes=6),
        C(I((4,), high=2), num_classes=2, dtype="int64"),
        C(I((4,), high=2), num_classes=2, dtype="float64"),
    ],
    grad=False,
)


# ---- NaN propagates (as numpy) ----

op(
    "nan_propagates",
    lambda x: [
        kn.maximum(x, 0.0),
        kn.minimum(x, 0.0),
        kn.max(x, axis=1),
        kn.min(x, axis=0),
        kn.sum(x, axis=0),
        kn.exp(x),
        kn.clip(x, -1.0, 1.0),
        kn.argmax(x, axis=1),
        kn.argmin(x, axis=1),
    ],
    lambda x: [
        np.maximum(x, 0.0),
        np.minimum(x, 0.0),
        np.max(x, axis=1),
        np.min(x, axis=0),
        np.sum(x, axis=0),
        np.exp(x),
        np.clip(x, -1.0, 1.0),
        np.argmax(x, axis=1),
        np.argmin(x, axis=1),
    ],
    [C(F((2, 3), "nan"))],
    grad=False,
    covers=("maximum", "minimum", "max", "min", "sum", "exp", "clip", "argmax", "argmin"),
)
op("relu_nan", kn.relu, np_relu, [C(F((2, 3), "nan"))], grad=False, covers=("relu",))  # max(nan, 0) is nan


# ---- large tensors: the blocked and multi-threaded kernel paths ----

LARGE = [
    ("add", lambda a, b: a + b, [C((600, 700), (700,)), C((600, 1), (1, 700))]),
    ("mul", lambda a, b: a * b, [C((300, 2, 700), (2, 1))]),
    ("exp", np.exp, [C((1000, 500))]),
    ("tanh", np.tanh, [C((1000, 501))]),
    (
        "sum",
        np.sum,
        [
            C(F((600, 700), "pos"), axis=0),
            C(F((600, 700), "pos"), axis=1),
            C(F((600, 700), "pos")),
            C(F((60, 70, 100), "pos"), axis=(0, 2)),
        ],
    ),
    ("max", np.max, [C((600, 700), axis=0), C((600, 700), axis=1), C((600, 700))]),
    ("argmax", np.argmax, [C((600, 700), axis=0), C((600, 700), axis=1), C((600, 700))]),
    ("softmax", np_softmax, [C((300, 1000)), C((300, 1000), axis=0)]),
    # k = 300 float32 dot products carry rounding of order sqrt(k) * eps * |a| |b|
    ("matmul", np.matmul, [C((200, 300), (300, 100), atol32=3e-4), C((4, 50, 300), (300, 60), atol32=3e-4)]),
    (
        "permute",
        lambda x, dims: np.transpose(x, dims),
        [C((300, 500), dims=(1, 0)), C((8, 16, 32, 4), dims=(2, 0, 3, 1))],
    ),
    ("concat", _many(np.concatenate), [C((300, 500), (300, 100), axis=1)]),
    ("take", lambda x, idx, axis=0: np.take(x, idx, axis=axis), [C((500, 300), I((700,), high=500))]),
]
for _name, _ref, _cases in LARGE:
    _build = {
        "add": kn.add,
        "mul": kn.mul,
        "exp": kn.exp,
        "tanh": kn.tanh,
        "sum": kn.sum,
        "max": kn.max,
        "argmax": kn.argmax,
        "softmax": kn.softmax,
        "matmul": kn.matmul,
        "permute": lambda x, dims: kn.permute(x, dims),
        "concat": _many(kn.concat),
        "take": lambda x, idx, axis=0: kn.take(x, idx, axis),
    }[_name]
    op(
        f"{_name}_large",
        _build,
        _ref,
        _cases,
        grad=False,
        dtypes=("float32",),
        covers=() if _name == "softmax" else (_name,),
    )
