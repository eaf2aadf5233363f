"""Compiled functions: calling conventions, updates, recompilation, passes, memory plan."""

import gc
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

import kiln as kn


def test_first_example_matches_numpy():
    rng = np.random.default_rng(0)
    x = kn.input("x", (None, 3, 4, 4))
    y = kn.input("y", (None,), dtype="int64")
    w0 = rng.standard_normal((5, 48)) * 0.1
    w = kn.Parameter(w0, name="w")
    h = kn.relu(kn.flatten(x) @ w.T)
    loss = kn.mean(kn.logsumexp(h, axis=1) - kn.take_along_axis(h, kn.unsqueeze(y, 1), 1)[:, 0])
    (gw,) = kn.grad(loss, [w])
    f = kn.function([x, y], [loss, gw])
    xv = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    yv = rng.integers(0, 5, 6)
    loss_v, gw_v = f(xv, yv)

    W = w0.astype(np.float32).astype(np.float64)
    a = xv.reshape(6, -1).astype(np.float64) @ W.T
    hv = np.maximum(a, 0)
    p = np.exp(hv - hv.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref_loss = np.mean(-np.log(p[np.arange(6), yv]))
    dh = p.copy()
    dh[np.arange(6), yv] -= 1
    dh = dh / 6 * (a > 0)
    ref_gw = dh.T @ xv.reshape(6, -1)
    np.testing.assert_allclose(loss_v, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(gw_v, ref_gw, rtol=1e-4, atol=1e-6)


def test_call_by_name_and_output_structures():
    a = kn.input("a", (2,))
    b = kn.input("b", (2,))
    s = a + b
    av, bv = np.array([1, 2], np.float32), np.array([10, 20], np.float32)
    single = kn.function([a, b], s)
    np.testing.assert_array_equal(single(b=bv, a=av), [11, 22])
    listed = kn.function([a, b], [s, a * b])
    out = listed(av, b=bv)
    assert isinstance(out, list) and len(out) == 2
    np.testing.assert_array_equal(out[1], [10, 40])
    named = kn.function([a, b], {"total": s, "diff": a - b})
    res = named(av, bv)
    assert set(res) == {"total", "diff"}
    np.testing.assert_array_equal(res["diff"], [-9, -18])
    assert named.output_names == ["total", "diff"]
    assert single.output_names == ["output"]
    assert listed.output_names == ["output0", "output1"]


def test_python_data_takes_the_input_dtype():
    a = kn.input("a", (3,))
    f = kn.function([a], a * 2)
    out = f([1, 2, 3])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [2, 4, 6])


def test_non_contiguous_feed_is_read_correctly():
    a = kn.input("a", (None, 3))
    f = kn.function([a], a + 0)
    base = np.arange(24, dtype=np.float32).reshape(6, 4)
    view = base[::2, 1:]
    np.testing.assert_array_equal(f(view), view)


def test_updates_apply_sgd_and_share_variables_between_functions():
    x = kn.input("x", (None, 2))
    w = kn.Parameter(np.array([[1.0], [2.0]]), name="w")
    loss = kn.sum(kn.square(x @ w))
    (g,) = kn.grad(loss, [w])
    lr = 0.01
    step = kn.function([x], loss, updates=[(w, w - lr * g)])
    predict = kn.function([x], x @ w, training=False)
    xv = np.array([[1.0, 1.0], [0.5, -1.0]], np.float32)
    W = np.array([[1.0], [2.0]])
    for _ in range(3):
        loss_v = step(xv)
        ref = np.sum((xv @ W) ** 2)
        np.testing.assert_allclose(loss_v, ref, rtol=1e-5)
        W = W - lr * (2 * xv.T @ (xv @ W))
    np.testing.assert_allclose(w.numpy(), W, rtol=1e-5)
    np.testing.assert_allclose(predict(xv), xv @ W, rtol=1e-5)


def test_updates_with_training_false_is_an_error():
    w = kn.Parameter(np.zeros(2), name="w")
    x = kn.input("x", (2,))
    with pytest.raises(kn.Error, match="training=False"):
        kn.function([x], x + w, updates=[(w, w + 1)], training=False)


def test_parameter_assign_and_numpy_copy():
    w = kn.Parameter(np.arange(4.0).reshape(2, 2), name="w")
    assert w.dtype == np.float32 and w.shape == (2, 2)
    snapshot = w.numpy()
    snapshot[0, 0] = 100
    np.testing.assert_array_equal(w.numpy(), [[0, 1], [2, 3]])
    w.assign(np.ones((2, 2)))
    np.testing.assert_array_equal(w.numpy(), np.ones((2, 2)))
    with pytest.raises(kn.Error, match="assign"):
        w.assign(np.ones(3))
    w64 = kn.Parameter(np.ones(2), name="w64", dtype="float64")
    assert w64.dtype == np.float64


def test_parameter_names_are_made_unique():
    a = kn.Parameter(np.zeros(1), name="w")
    b = kn.Parameter(np.zeros(1), name="w")
    assert a._var_name != b._var_name


def test_new_batch_size_recompiles_transparently():
    x = kn.input("x", (None, 4))
    f = kn.function([x], kn.sum(x * x, axis=1))
    for n in (1, 7, 3, 7, 1):
        xv = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(f(xv), (xv * xv).sum(1), rtol=1e-5)
    assert f._f.num_plans == 3


def test_eval_and_grad_of_unrelated_tensor_is_zero():
    x = kn.input("x", (3,))
    z = kn.input("z", (2, 2))
    y = kn.sum(x * x)
    gx, gz = kn.grad(y, [x, z])
    xv = np.array([1, 2, 3], np.float32)
    out = kn.eval([y, gx, gz], {x: xv, z: np.ones((2, 2), np.float32)})
    np.testing.assert_allclose(out[0], 14)
    np.testing.assert_allclose(out[1], 2 * xv)
    np.testing.assert_array_equal(out[2], np.zeros((2, 2)))


def test_grad_with_grad_output_is_a_vector_jacobian_product():
    x = kn.input("x", (3,), "float64")
    v = kn.input("v", (3,), "float64")
    y = kn.tanh(x)
    (g,) = kn.grad(y, [x], grad_output=v)
    xv, vv = np.array([0.1, -0.5, 2.0]), np.array([1.0, 2.0, -1.0])
    out = kn.eval(g, {x: xv, v: vv})
    np.testing.assert_allclose(out, vv * (1 - np.tanh(xv) ** 2), rtol=1e-12)


def test_second_derivative_elementwise():
    x = kn.input("x", (4,), "float64")
    y = kn.sum(x * x * x + kn.tanh(x))
    (g,) = kn.grad(y, [x])
    (h,) = kn.grad(kn.sum(g), [x])  # the Hessian is diagonal: its row sums are the diagonal
    xv = np.array([-1.5, -0.2, 0.3, 2.0])
    t = np.tanh(xv)
    g_v, h_v = kn.eval([g, h], {x: xv})
    np.testing.assert_allclose(g_v, 3 * xv**2 + 1 - t**2, rtol=1e-12)
    np.testing.assert_allclose(h_v, 6 * xv - 2 * t * (1 - t**2), rtol=1e-12)


def test_second_derivative_through_matmul():
    rng = np.random.default_rng(1)
    x = kn.input("x", (2, 3), "float64")
    w = kn.input("w", (3, 4), "float64")
    v = kn.input("v", (2, 3), "float64")
    y = 0.5 * kn.sum(kn.square(x @ w))
    (gx,) = kn.grad(y, [x])  # (x w) w^T
    (gw,) = kn.grad(kn.sum(gx * v), [w])  # d/dw <(x w) w^T, v> = x^T v w + v^T x w
    xv, wv, vv = rng.standard_normal((2, 3)), rng.standard_normal((3, 4)), rng.standard_normal((2, 3))
    out = kn.eval([gx, gw], {x: xv, w: wv, v: vv})
    np.testing.assert_allclose(out[0], xv @ wv @ wv.T, rtol=1e-12)
    np.testing.assert_allclose(out[1], xv.T @ vv @ wv + vv.T @ xv @ wv, rtol=1e-12)


def test_second_derivative_matches_gradcheck_of_the_gradient():
    def grad_norm(x):
        (g,) = kn.grad(kn.sum(kn.sigmoid(x) * x), [x])
        return kn.sum(g * g)

    assert kn.gradcheck(grad_norm, [np.random.default_rng(2).standard_normal((2, 3))]) < 1e-6


def test_common_subexpressions_are_merged_and_dead_code_dropped():
    x = kn.input("x", (3,))
    a = kn.exp(x) * 2
    b = kn.exp(x) * 2
    _unused = kn.log(x) + 5
    f = kn.function([x], a + b)
    # input, exp, constant 2, mul, add: the second exp/mul merge; log never enters
    assert f.num_nodes == 5, str(f)
    xv = np.array([0.0, 1.0, 2.0], np.float32)
    np.testing.assert_allclose(f(xv), 4 * np.exp(xv), rtol=1e-6)


def test_constant_expressions_are_folded():
    x = kn.input("x", (3,))
    c = kn.exp(kn.constant(np.array([0.0, 1.0, 2.0]))) * 3 + 1
    f = kn.function([x], x + c)
    assert f.num_nodes == 3, str(f)  # input, folded constant, add
    np.testing.assert_allclose(f(np.zeros(3, np.float32)), np.exp([0.0, 1.0, 2.0]) * 3 + 1, rtol=1e-6)


def test_long_elementwise_chain_uses_a_small_constant_number_of_buffers():
    x = kn.input("x", (None, 64))
    y = x
    for i in range(100):
        y = kn.tanh(y) * 0.9 + 0.01 * (i % 3) if i % 2 else kn.sigmoid(y) - 0.5
    f = kn.function([x], y)
    xv = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    ref = xv.astype(np.float64)
    for i in range(100):
        ref = np.tanh(ref) * 0.9 + 0.01 * (i % 3) if i % 2 else 1 / (1 + np.exp(-ref)) - 0.5
    np.testing.assert_allclose(f(xv), ref, rtol=1e-4, atol=1e-5)
    stats = f.plan_stats()
    assert stats["values"] >= 150  # the chain really has this many intermediates
    assert stats["buffers"] <= 3, stats
    assert stats["in_place"] >= 100, stats


def test_process_memory_does_not_grow_over_10000_calls():
    x = kn.input("x", (None, 32))
    w = kn.Parameter(np.random.default_rng(0).standard_normal((32, 32)) * 0.1, name="w")
    loss = kn.mean(kn.square(kn.tanh(x @ w)))
    (g,) = kn.grad(loss, [w])
    step = kn.function([x], loss, updates=[(w, w - 0.01 * g)])
    xv = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    for _ in range(500):  # warm up allocator pools
        step(xv)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(10_000):
        step(xv)
    gc.collect()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 2048, f"max RSS grew by {after - before} KiB"  # ru_maxrss is in KiB


def test_a_planned_call_allocates_only_its_outputs():
    x = kn.input("x", (None, 16))
    w = kn.Parameter(np.random.default_rng(0).standard_normal((16, 8)), name="w")
    h = kn.tanh(x @ w)
    loss = kn.mean(kn.square(h))
    (g,) = kn.grad(loss, [w])
    step = kn.function([x], [loss, h], updates=[(w, w - 0.1 * g)])
    xv = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    step(xv)  # plans and allocates its buffers
    before = kn._core.allocation_count()
    step(xv)
    assert kn._core.allocation_count() - before == 2  # loss and h, nothing else


def test_outputs_wrap_engine_memory_without_a_copy():
    x = kn.input("x", (3,))
    f = kn.function([x], x * 2)
    out = f(np.ones(3, np.float32))
    assert not out.flags.owndata and out.flags.c_contiguous and out.flags.writeable
    out[0] = 7  # the caller owns the result: writing to it is fine
    np.testing.assert_array_equal(f(np.ones(3, np.float32)), [2, 2, 2])


def test_concurrent_calls_from_threads_give_correct_results():
    import threading

    x = kn.input("x", (None, 64))
    w = kn.Parameter(np.random.default_rng(0).standard_normal((64, 64)), name="w")
    f = kn.function([x], kn.tanh(x @ w))
    W = w.numpy()
    errors = []

    def worker(seed):
        xv = np.random.default_rng(seed).standard_normal((8, 64)).astype(np.float32)
        for _ in range(50):
            if not np.allclose(f(xv), np.tanh(xv @ W), rtol=1e-4, atol=1e-5):
                errors.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_updates_apply_at_once_reading_old_values():
    a = kn.Parameter(np.array([1.0, 2.0]), name="a")
    b = kn.Parameter(np.array([10.0, 20.0]), name="b")
    x = kn.input("x", (2,))
    swap = kn.function([x], x * 1, updates=[(a, b), (b, a)])
    swap(np.zeros(2, np.float32))
    np.testing.assert_array_equal(a.numpy(), [10, 20])
    np.testing.assert_array_equal(b.numpy(), [1, 2])
    # a target network copied from weights that the same call also updates gets the old weights
    shrink = kn.function([x], x * 1, updates=[(a, kn.reshape(b, (2,))), (b, b * 0.5)])
    shrink(np.zeros(2, np.float32))
    np.testing.assert_array_equal(a.numpy(), [1, 2])
    np.testing.assert_array_equal(b.numpy(), [0.5, 1])


def test_target_network_sync_inside_a_training_step():
    w = kn.Parameter(np.array([1.0]), name="w")
    target = kn.Parameter(np.array([0.0]), name="target", trainable=False)
    x = kn.input("x", (1,))
    loss = kn.sum(w * x)
    opt = kn.optim.SGD([w], lr=0.3)
    step = kn.function([x], loss, updates=[(target, w)] + opt.updates(loss))
    step(np.ones(1, np.float32))
    np.testing.assert_allclose(target.numpy(), [1.0])  # w before this step's update
    np.testing.assert_allclose(w.numpy(), [0.7])


def test_two_updates_of_one_variable_is_an_error():
    v = kn.Parameter(np.zeros(2), name="v")
    x = kn.input("x", (2,))
    with pytest.raises(kn.Error, match="two updates"):
        kn.function([x], x, updates=[(v, x + 1), (v, v * 2)])


def test_plan_cache_keeps_a_bounded_number_of_shapes():
    x = kn.input("x", (None, 8))
    f = kn.function([x], kn.tanh(x))
    for n in range(1, 30):
        f(np.ones((n, 8), np.float32))
    assert f._f.num_plans <= 8
    np.testing.assert_allclose(f(np.ones((3, 8), np.float32)), np.tanh(np.ones((3, 8))), rtol=1e-6)


def test_the_same_output_twice_gives_independent_arrays():
    x = kn.input("x", (2,))
    y = x * 2
    a, b = kn.function([x], [y, y])(np.ones(2, np.float32))
    a[0] = 100
    assert b[0] == 2


def test_a_failed_call_releases_its_inputs():
    import weakref

    x = kn.input("x", (3,))
    i = kn.input("i", (2,), "int64")
    f = kn.function([x, i], kn.take(x, i))
    xv = np.zeros(3, np.float32)
    ref = weakref.ref(xv)
    with pytest.raises(kn.Error, match="out of bounds"):
        f(xv, np.array([0, 7]))
    del xv
    gc.collect()
    assert ref() is None


def test_a_transposed_matmul_operand_is_read_in_place():
    """x @ w.T and batched transposed operands compile to one matmul with its transpose flags: no
    permute runs (it would copy the weight on every call), and the values are numpy's."""
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((4, 5)), rng.standard_normal((3, 5))
    bv, cv = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 3, 6))
    x, b, c = (
        kn.input("x", (None, 5), "float64"),
        kn.input("b", bv.shape, "float64"),
        kn.input("c", cv.shape, "float64"),
    )
    w = kn.Parameter(wv, name="w", dtype="float64")
    f = kn.function([x, b, c], [x @ w.T, kn.transpose(b) @ kn.transpose(c)], training=False)
    assert "permute" not in str(f)
    got_y, got_z = f(xv, bv, cv)
    np.testing.assert_allclose(got_y, xv @ wv.T, rtol=1e-12)
    np.testing.assert_allclose(got_z, np.swapaxes(bv, 1, 2) @ np.swapaxes(cv, 1, 2), rtol=1e-12)


@pytest.mark.parametrize(
    "m, k, n", [(32, 3072, 100), (30, 300, 96), (7, 257, 40), (1, 64, 17), (64, 100, 33), (13, 777, 70)]
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_inference_linear_layers_with_few_rows_match_numpy(m, k, n, threads):
    """A small batch through a linear layer in an inference function runs against the weight
    transposed once and kept (every edge of the 8 x 32 blocks: short row blocks, a narrow last
    panel; k split over the threads where the weight is tall, k >= 4 n, its last part short); an
    assign changes what the next call reads."""
    rng = np.random.default_rng(m * k + n)
    xv, wv = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    x = kn.input("x", (None, k))
    w = kn.Parameter(wv, name="w")
    f = kn.function([x], kn.relu(x @ w.T), training=False)
    before = kn.num_threads()
    try:
        kn.set_num_threads(threads)
        for _ in range(2):
            want = np.maximum(xv.astype(np.float64) @ w.numpy().astype(np.float64).T, 0)
            np.testing.assert_allclose(f(xv), want, rtol=1e-5, atol=1e-4 * np.sqrt(k))
            w.assign(rng.standard_normal((n, k)).astype(np.float32))
    finally:
        kn.set_num_threads(before)


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's (os.sched_setaffinity)"
)
def test_the_thread_pool_fits_the_cpus_the_process_may_use():
    """A process pinned to one CPU (taskset, a container's cpuset) gets one kernel thread, not one
    per core of the machine: two spinning threads on one CPU ran ResNet-8 90x slower. The variable
    KILN_NUM_THREADS still decides where it is set."""
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import kiln; print(kiln.num_threads())"
    env = {k: v for k, v in os.environ.items() if k != "KILN_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    env["KILN_NUM_THREADS"] = "3"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"
