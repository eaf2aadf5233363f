"""The CUDA backend against the CPU backend: every op-table case forward (float32 and float64) and
its gradients, random draws, a ConvNet's training curve, host<->device traffic and allocations of
a training step. Without a GPU only the checks that need none run; the rest skip with the reason
"no CUDA device"."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA_DIR
from op_table import make_input
from test_ops import FORWARD, GRADIENT, _outputs, _rng

import kiln as kn

needs_device = pytest.mark.skipif(not kn.cuda.is_available(), reason="no CUDA device")


def _compare(got: np.ndarray, want: np.ndarray, rtol32: float, atol32: float) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype == np.float32:
        np.testing.assert_allclose(got, want, rtol=2 * rtol32, atol=2 * atol32)
    elif want.dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    else:
        np.testing.assert_array_equal(got, want)


@needs_device
@pytest.mark.parametrize("entry, case, dtype", FORWARD)
def test_forward_matches_the_cpu(entry, case, dtype):
    rng = _rng(entry.name, case.id)
    arrays = [make_input(s, dtype, rng) for s in case.inputs]
    syms = [kn.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    outs = _outputs(entry.build(*syms, **case.kw))
    want = kn.function(syms, outs)(*arrays)
    gpu = kn.function(syms, outs, device="cuda")
    got = gpu(*arrays)
    atol = entry.atol32 if case.atol32 is None else case.atol32
    for g, w in zip(got, want):
        _compare(g, w, entry.rtol32, atol)
    for g, h in zip(got, gpu(*arrays)):  # the cached device plan gives the same again
        np.testing.assert_array_equal(g, h)


@needs_device
@pytest.mark.parametrize("entry, case", GRADIENT)
def test_gradient_matches_the_cpu(entry, case):
    rng = _rng("grad", entry.name, case.id)
    arrays = [make_input(s, "float64", rng) for s in case.inputs]
    floats = [i for i, s in enumerate(case.inputs) if s.is_float]
    syms = [kn.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    outs = _outputs(entry.build(*syms, **case.kw))
    loss = None
    for o in outs:
        term = kn.sum(o * kn.constant(rng.standard_normal(o.shape), dtype="float64"))
        loss = term if loss is None else loss + term
    grads = kn.grad(loss, [syms[i] for i in floats])
    want = kn.function(syms, grads)(*arrays)
    got = kn.function(syms, grads, device="cuda")(*arrays)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


def test_every_compute_op_has_a_cuda_kernel_where_the_backend_is_built():
    if not kn.cuda.is_built():
        pytest.skip("kiln was built without its CUDA backend")
    missing = []
    for name in kn._core.op_names():
        info = kn._core.op_info(name)
        if info["kind"] == "compute" and not info["has_cuda_kernel"]:
            missing.append(name)
    assert not missing, f"ops without a CUDA kernel: {missing}"


def test_device_argument_is_checked():
    x = kn.input("x", (None, 3))
    with pytest.raises(kn.Error, match="device must be 'cpu' or 'cuda'"):
        kn.function([x], x * 2.0, device="tpu")
    f = kn.function([x], x * 2.0)
    assert f.device == "cpu"
    if not kn.cuda.is_available():
        with pytest.raises(kn.Error, match="device cuda: .*(no CUDA device|without its CUDA backend)"):
            kn.function([x], x * 2.0, device="cuda")
        with pytest.raises(kn.Error, match="no CUDA device|without its CUDA backend"):
            f.to("cuda")
        assert f.device == "cpu"  # unchanged after the refusal


@needs_device
@pytest.mark.parametrize("backend", ["cudnn", "kiln"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, eps", [((8, 4, 5, 5), 1e-5), ((6, 3), 0.1), ((4, 2, 3, 2, 2), 1e-3)])
def test_training_batch_norm_matches_the_cpu(monkeypatch, backend, dtype, shape, eps):
    """Batch norm in training steps runs on kiln's kernels, or on cuDNN's with KILN_CUDNN_BATCH_NORM=1."""
    if backend == "cudnn":
        monkeypatch.setenv("KILN_CUDNN_BATCH_NORM", "1")
    else:
        monkeypatch.delenv("KILN_CUDNN_BATCH_NORM", raising=False)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    c = shape[1]
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    seed = rng.standard_normal(shape).astype(dtype)
    X = kn.input("x", shape, dtype)
    G, B = kn.Parameter(gamma, name="g", dtype=dtype), kn.Parameter(beta, name="b", dtype=dtype)
    M = kn.Parameter(rm, name="m", dtype=dtype, trainable=False)
    V = kn.Parameter(rv, name="v", dtype=dtype, trainable=False)
    y = kn.batch_norm(X, M, V, G, B, eps=eps, momentum=0.3)
    outs = [y, *kn.grad(kn.sum(y * kn.constant(seed, dtype=dtype)), [X, G, B])]

    def run(device: str) -> list[np.ndarray]:  # the output, its gradients, the new running statistics
        M.assign(rm), V.assign(rv)
        return [*kn.function([X], outs, device=device)(x), M.numpy(), V.numpy()]

    want, got = run("cpu"), run("cuda")
    assert not np.allclose(want[-1], rv)  # the step moved the running variance
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)


@needs_device
@pytest.mark.parametrize("bias, residual", [(False, False), (True, False), (False, True)])
def test_inference_conv_with_folded_batch_norm_matches_the_cpu(bias, residual):
    """An inference function's conv -> batch_norm (-> + shortcut) -> relu compiles to one convolution
    (the batch norm and the shortcut folded in as its epilogue); the GPU's epilogue gives the CPU's
    values."""
    rng = np.random.default_rng(6)
    k = 32
    xv = rng.standard_normal((3, k, 14, 14)).astype(np.float32)
    x = kn.input("x", xv.shape)
    w = kn.constant(rng.standard_normal((k, k, 3, 3)).astype(np.float32) * 0.1)
    b = kn.constant(rng.standard_normal(k).astype(np.float32)) if bias else None
    stats = [rng.standard_normal(k), rng.standard_normal(k), rng.standard_normal(k), rng.uniform(0.5, 2, k)]
    G, B, M, V = (kn.Parameter(v.astype(np.float32), name=n) for v, n in zip(stats, "gbmv"))
    y = kn.batch_norm(kn.conv2d(x, w, b, padding=1), M, V, G, B)
    y = kn.relu(y + x if residual else y)
    cpu = kn.function([x], y, training=False)
    assert "bn_eps" in str(cpu) and ("residual=1" in str(cpu)) == residual
    np.testing.assert_allclose(
        kn.function([x], y, training=False, device="cuda")(xv), cpu(xv), rtol=1e-4, atol=1e-4
    )


@needs_device
def test_a_fused_residual_of_a_batch_of_one_matches_the_cpu():
    """A residual whose unknown batch is 1 at run time, fused into a convolution of batch 3: the
    GPU's epilogue adds it to every sample, as the CPU does."""
    rng = np.random.default_rng(7)
    c = 32
    xv = rng.standard_normal((3, c, 14, 14)).astype(np.float32)
    rv = rng.standard_normal((1, c, 14, 14)).astype(np.float32)
    x, r = kn.input("x", (None, c, 14, 14)), kn.input("r", (None, c, 14, 14))
    w = kn.constant(rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.1)
    y = kn.relu(kn.conv2d(x, w, padding=1) + r)
    cpu = kn.function([x, r], y, training=False)
    assert "residual=1" in str(cpu)
    gpu = kn.function([x, r], y, training=False, device="cuda")
    np.testing.assert_allclose(gpu(xv, rv), cpu(xv, rv), rtol=1e-4, atol=1e-4)


@needs_device
@pytest.mark.parametrize("draw", ["uniform", "normal", "dropout"])
def test_random_draws_equal_the_cpu(draw):
    x = kn.input("x", (64, 1000))
    if draw == "uniform":
        y = kn.uniform((64, 1000), seed=3) + x
    elif draw == "normal":
        y = kn.normal((64, 1000), seed=3) + x
    else:
        y = kn.dropout(x, 0.3, seed=3)
    a = np.ones((64, 1000), np.float32)
    cpu, gpu = kn.function([x], y), kn.function([x], y, device="cuda")
    for _ in range(2):  # the second call draws afresh, on both alike
        np.testing.assert_allclose(gpu(a), cpu(a), rtol=1e-6, atol=1e-6)


def _convnet_losses(device: str, steps: int, X: np.ndarray, Y: np.ndarray) -> list[float]:
    with kn.Graph():
        kn.manual_seed(0)
        model = kn.nn.Sequential(
            kn.nn.Conv2d(3, 16, 3, padding=1),
            kn.nn.BatchNorm2d(16),
            kn.nn.ReLU(),
            kn.nn.MaxPool2d(2),
            kn.nn.Conv2d(16, 32, 3, padding=1),
            kn.nn.ReLU(),
            kn.nn.AdaptiveAvgPool2d(1),
            kn.nn.Flatten(),
            kn.nn.Linear(32, 10),
        )
        x = kn.input("x", (None, 3, 32, 32))
        y = kn.input("y", (None,), dtype="int64")
        loss = kn.softmax_cross_entropy(model(x), y)
        opt = kn.optim.Adam(model.parameters(), lr=1e-3)
        step = kn.function([x, y], loss, updates=opt.updates(loss), device=device)
        out = []
        for i in range(steps):
            b = slice((i * 64) % len(X), (i * 64) % len(X) + 64)
            out.append(float(step(X[b], Y[b])))
        return out, model.state_dict()


def _cifar_batch():
    if (DATA_DIR / "cifar-10-batches-py").exists():
        X, Y = kn.data.load_cifar10(DATA_DIR, split="test")
        return ((X[:640] / 255.0 - 0.5) / 0.25).astype(np.float32), Y[:640].astype(np.int64)
    rng = np.random.default_rng(0)  # no data set here: the same check on random images
    return rng.standard_normal((640, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 640)


@needs_device
def test_convnet_training_curve_matches_the_cpu():
    X, Y = _cifar_batch()
    cpu, cpu_state = _convnet_losses("cpu", 30, X, Y)
    gpu, gpu_state = _convnet_losses("cuda", 30, X, Y)
    assert gpu[-1] < gpu[0]  # it trains
    np.testing.assert_allclose(gpu, cpu, rtol=2e-3, atol=2e-4)
    for k in cpu_state:  # the weights read back from the device agree too
        np.testing.assert_allclose(gpu_state[k], cpu_state[k], rtol=1e-2, atol=1e-3)


@needs_device
def test_training_step_moves_only_its_batch_and_loss():
    x = kn.input("x", (None, 3, 16, 16))
    y = kn.input("y", (None,), dtype="int64")
    model = kn.nn.Sequential(
        kn.nn.Conv2d(3, 8, 3, padding=1), kn.nn.ReLU(), kn.nn.Flatten(), kn.nn.Linear(8 * 256, 10)
    )
    loss = kn.softmax_cross_entropy(model(x), y)
    last = kn.Parameter(np.zeros((), np.float32), name="last_loss")  # written, never read: on the device too
    updates = kn.optim.SGD(model.parameters(), lr=0.1).updates(loss) + [(last, loss)]
    step = kn.function([x, y], loss, updates=updates, device="cuda")
    xb = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    yb = np.arange(32) % 10
    step(xb, yb)  # the first call moves the variables to the device and plans
    before, allocs = kn.cuda.transfers(), kn._core.allocation_count()
    for _ in range(3):
        step(xb, yb)
    after = kn.cuda.transfers()
    assert after["to_device_bytes"] - before["to_device_bytes"] == 3 * (xb.nbytes + yb.nbytes)
    assert after["to_host_bytes"] - before["to_host_bytes"] == 3 * 4  # the float32 loss
    assert kn._core.allocation_count() - allocs == 3  # the host array of each loss, nothing on the device
    w = model.parameters()[0].numpy()  # read back from the device
    assert np.isfinite(w).all()
    assert np.isfinite(last.numpy()) and last.numpy() > 0


@needs_device
def test_a_function_moves_between_devices_with_its_variables():
    x = kn.input("x", (None, 4))
    w = kn.Parameter(np.eye(4), name="w")
    f = kn.function([x], x @ w, updates=[(w, w * 2.0)])
    a = np.ones((2, 4), np.float32)
    f.to("cuda")
    np.testing.assert_array_equal(f(a), a)  # w doubles after the call, on the device
    f.to("cpu")
    np.testing.assert_array_equal(f(a), 2 * a)
    np.testing.assert_array_equal(w.numpy(), 4 * np.eye(4))
