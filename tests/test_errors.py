"""Bad input gives a kn.Error naming the op, the shapes and the user's line; never a crash."""

import inspect

import numpy as np
import pytest

import kiln as kn


def here(offset: int = 0) -> str:
    frame = inspect.currentframe().f_back
    return f"test_errors.py:{frame.f_lineno + offset}"


def test_error_is_a_value_error():
    assert issubclass(kn.Error, ValueError)


def test_matmul_shape_mismatch_names_op_shapes_and_line():
    a = kn.input("a", (None, 4))
    b = kn.input("b", (5, 6))
    with pytest.raises(kn.Error) as e:
        line = here(1)
        a @ b
    msg = str(e.value)
    assert "matmul" in msg and "(None, 4)" in msg and "(5, 6)" in msg and line in msg, msg


def test_broadcast_mismatch_names_op_shapes_and_line():
    a = kn.input("a", (3, 4))
    b = kn.input("b", (5,))
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.add(a, b)
    msg = str(e.value)
    assert "add" in msg and "(3, 4)" in msg and "(5,)" in msg and line in msg, msg


def test_reshape_and_concat_mismatch():
    a = kn.input("a", (3, 4))
    with pytest.raises(kn.Error, match=r"reshape.*\(3, 4\)"):
        kn.reshape(a, (5, -1))
    with pytest.raises(kn.Error, match="concat"):
        kn.concat([a, kn.input("b", (3, 5))], axis=0)
    with pytest.raises(kn.Error, match="axis 2 is out of range"):
        kn.sum(a, axis=2)


def test_index_dtype_is_checked_at_build_time():
    x = kn.input("x", (3, 4))
    with pytest.raises(kn.Error, match="take: indices must be int32 or int64"):
        kn.take(x, kn.input("i", (2,), "float32"))


def test_where_condition_must_be_boolean_like():
    x = kn.input("x", (3,))
    with pytest.raises(kn.Error, match="where"):
        kn.where(x > 0, x, kn.input("y", (4,)))


def test_missing_unknown_and_twice_given_feeds():
    a = kn.input("a", (2,))
    b = kn.input("b", (2,))
    f = kn.function([a, b], a + b)
    one = np.ones(2, np.float32)
    with pytest.raises(kn.Error, match="missing input 'b'"):
        f(one)
    with pytest.raises(kn.Error, match="unknown input 'c'"):
        f(one, one, c=one)
    with pytest.raises(kn.Error, match="given twice"):
        f(one, a=one)
    with pytest.raises(kn.Error, match="takes 2 inputs"):
        f(one, one, one)


def test_wrong_feed_shape_and_dtype():
    a = kn.input("a", (None, 3))
    f = kn.function([a], a * 2)
    with pytest.raises(kn.Error, match=r"input 'a' expects float32\(None, 3\), got float32\(2, 4\)"):
        f(np.ones((2, 4), np.float32))
    with pytest.raises(kn.Error, match=r"input 'a' expects float32, got a float64 array"):
        f(np.ones((2, 3)))
    with pytest.raises(kn.Error, match="expects"):
        f(np.ones(3, np.float32))


def test_non_scalar_grad_without_grad_output():
    x = kn.input("x", (3,))
    with pytest.raises(kn.Error, match="pass grad_output"):
        kn.grad(x * 2, [x])


def test_grad_of_integer_tensor_is_an_error():
    x = kn.input("x", (3,))
    i = kn.input("i", (3,), "int64")
    with pytest.raises(kn.Error, match="dtype int64"):
        kn.grad(kn.sum(x * kn.cast(i, "float32")), [i])
    with pytest.raises(kn.Error, match="only floating-point"):
        kn.grad(kn.sum(i), [x])


def test_run_time_index_error_names_the_op_and_line():
    x = kn.input("x", (4, 2))
    i = kn.input("i", (None,), "int64")
    line = here(1)
    y = kn.take(x, i)
    f = kn.function([x, i], y)
    with pytest.raises(kn.Error) as e:
        f(np.zeros((4, 2), np.float32), np.array([1, 7]))
    msg = str(e.value)
    assert "index 7 is out of bounds" in msg and "take" in msg and line in msg, msg


def test_symbolic_tensor_has_no_truth_value():
    x = kn.input("x", (3,))
    with pytest.raises(kn.Error, match="truth value"):
        if x > 0:
            pass


def test_duplicate_input_name():
    kn.input("x", (3,))
    with pytest.raises(kn.Error, match="already used"):
        kn.input("x", (3,))


def test_outputs_needing_an_unfed_input():
    a = kn.input("a", (2,))
    b = kn.input("b", (2,))
    with pytest.raises(kn.Error, match="depend on input 'b'"):
        kn.function([a], a + b)


def test_tensors_of_two_graphs_do_not_mix():
    a = kn.input("a", (2,))
    with kn.Graph():
        b = kn.input("b", (2,))
    with pytest.raises(kn.Error, match="different graphs|another graph"):
        a + b


def test_indexing_errors():
    x = kn.input("x", (3, 4))
    with pytest.raises(kn.Error, match="out of bounds"):
        x[3]
    with pytest.raises(kn.Error, match="too many indices"):
        x[0, 0, 0]
    with pytest.raises(kn.Error, match="step cannot be zero"):
        x[::0]


def test_topk_errors_name_the_op_k_and_shape():
    with kn.Graph():
        x = kn.input("x", (3, 10))
        with pytest.raises(kn.Error, match=r"topk: k = 11 is outside \[0, 10\].*\(3, 10\)"):
            kn.topk(x, 11)
        with pytest.raises(kn.Error, match=r"topk: k = -1"):
            kn.topk(x, -1, axis=0)
        with pytest.raises(kn.Error, match="topk.*axis"):
            kn.topk(x, 1, axis=2)
        with pytest.raises(kn.Error, match="topk: expects a tensor of at least one dimension"):
            kn.topk(kn.sum(x), 1)
    with kn.Graph():  # a symbolic axis: checked when the call's shapes are known
        x = kn.input("x", (None, None))
        f = kn.function([x], kn.topk(x, 4)[1])
        with pytest.raises(kn.Error, match=r"topk: k = 4 is outside \[0, 3\]"):
            f(np.zeros((2, 3), np.float32))
