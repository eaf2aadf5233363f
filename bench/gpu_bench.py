"""kiln's CUDA backend against PyTorch on the same GPU, one table: sgemm (float32, and with TF32
allowed on both sides) and hgemm in TFLOP/s, conv2d forward+backward and ResNet-18 training steps in images/s.
Run by bench/gpu_check.sh; prints markdown rows ready for bench/README.md. Medians of timed runs
after warm-up; every kiln call returns only when its GPU work is done, and PyTorch is synchronized
the same way."""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import torch  # first: kiln then shares the cuBLAS/cuDNN PyTorch has loaded
from test_deploy_bench import resnet18

import kiln as kn

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def median_seconds(fn, runs=RUNS, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_sync(fn):
    def run():
        fn()
        torch.cuda.synchronize()

    return run


def gemm(n: int, dtype: str = "float32", tf32: bool = False) -> tuple[float, float]:
    """TFLOP/s of an n x n x n product (float32, float32 with TF32 allowed, or float16 accumulating
    in float32): kiln (operands in device variables, the product written to a third, nothing
    copied) and cuBLAS through torch.mm."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    kn.cuda.allow_tf32(tf32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    with kn.Graph():
        A, B = kn.Parameter(a, name="a", dtype=dtype), kn.Parameter(b, name="b", dtype=dtype)
        C = kn.Parameter(np.zeros((n, n), dtype), name="c", dtype=dtype)
        f = kn.function([], [], updates=[(C, A @ B)], device="cuda")
        k = median_seconds(lambda: f())
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    t = median_seconds(torch_sync(lambda: torch.mm(ta, tb)))
    kn.cuda.allow_tf32(False)
    torch.backends.cuda.matmul.allow_tf32 = False
    flops = 2.0 * n**3
    return flops / k / 1e12, flops / t / 1e12


def conv_fwd_bwd(batch: int, c: int, hw: int) -> tuple[float, float]:
    """Images/s of a 3x3 convolution forward and both backward passes, input resident on the GPU."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32)
    with kn.Graph():
        X = kn.Parameter(x, name="x")
        W = kn.Parameter(w, name="w")
        y = kn.conv2d(X, W, padding=1)
        gx, gw = kn.grad(kn.sum(y * y), [X, W])
        f = kn.function([], [kn.sum(gx) + kn.sum(gw)], device="cuda")
        k = median_seconds(lambda: f())
    tx = torch.from_numpy(x).cuda().requires_grad_()
    tw = torch.from_numpy(w).cuda().requires_grad_()

    def step():
        y = torch.nn.functional.conv2d(tx, tw, padding=1)
        gx, gw = torch.autograd.grad((y * y).sum(), [tx, tw])
        (gx.sum() + gw.sum()).item()

    t = median_seconds(torch_sync(step))
    return batch / k, batch / t


def print_profile(f: kn.Function, title: str, calls: int = 3) -> None:
    """Milliseconds per call of each op kind in f, kernels synchronized one by one."""
    per_op: dict[str, float] = {}
    for node, _, us in f.profile(calls=calls):
        op = node.split(" ", 1)[1]
        per_op[op] = per_op.get(op, 0.0) + us / 1e3
    total = sum(per_op.values())
    rows = ", ".join(f"{op} {ms:.2f}" for op, ms in sorted(per_op.items(), key=lambda r: -r[1])[:14])
    print(f"{title}: {total:.1f} ms in kernels; by op (ms): {rows}", flush=True)


def resnet18_step(
    batch: int, size: int, tf32: bool = False, profile: bool = False
) -> tuple[float, float, float, float]:
    """Images/s of a ResNet-18 SGD-momentum training step: kiln on a host batch, kiln on a batch
    already on the GPU (held in variables), PyTorch copying the batch from the host too, and
    PyTorch with the batch already on the GPU."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 1000, batch)
    kn.cuda.allow_tf32(tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    with kn.Graph():
        kn.manual_seed(0)
        model = resnet18(kn)
        X = kn.input("x", (None, 3, size, size))
        Y = kn.input("y", (None,), dtype="int64")
        loss = kn.softmax_cross_entropy(model(X), Y)
        opt = kn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = kn.function([X, Y], loss, updates=opt.updates(loss), device="cuda")
        k = median_seconds(lambda: step(x, y))
    with kn.Graph():  # the same step, its batch in variables: they stay on the device
        kn.manual_seed(0)
        model = resnet18(kn)
        X = kn.Parameter(x, name="x", trainable=False)
        Y = kn.Parameter(y, name="y", dtype="int64", trainable=False)
        loss = kn.softmax_cross_entropy(model(X), Y)
        opt = kn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        resident = kn.function([], loss, updates=opt.updates(loss), device="cuda")
        k_dev = median_seconds(lambda: resident())
        if profile:  # batch norm by kiln's own kernels (the default) and by cuDNN
            title = f"kiln's ResNet-18 step, batch {batch} at {size}x{size}, batch on the GPU"
            print_profile(resident, title + ", kiln's batch norm kernels")
            os.environ["KILN_CUDNN_BATCH_NORM"] = "1"
            print_profile(resident, title + ", cuDNN batch norm")
            del os.environ["KILN_CUDNN_BATCH_NORM"]
    net = resnet18(torch).cuda()
    topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    xd, yd = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def tstep(from_host: bool):
        xb, yb = (torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()) if from_host else (xd, yd)
        topt.zero_grad(set_to_none=True)
        out = torch.nn.functional.cross_entropy(net(xb), yb)
        out.backward()
        topt.step()
        out.item()

    t_host = median_seconds(torch_sync(lambda: tstep(True)))
    t_dev = median_seconds(torch_sync(lambda: tstep(False)))
    kn.cuda.allow_tf32(False)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return batch / k, batch / k_dev, batch / t_host, batch / t_dev


def main() -> None:
    # Exact float32 on both sides unless a row says TF32 (PyTorch's cuDNN default is TF32 on).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False  # heuristics, as kiln
    print(f"GPU: {torch.cuda.get_device_name(0)}; kiln: {kn.cuda.status()}; torch {torch.__version__}")
    print("| measure | kiln | PyTorch | kiln / PyTorch |")
    print("| --- | ---: | ---: | ---: |")
    for batch, size, tf32 in ((128, 224, False), (512, 32, False), (128, 224, True)):
        k, kd, th, td = resnet18_step(batch, size, tf32, profile=not tf32)
        label = f"ResNet-18 train step, batch {batch} {size}x{size}{', TF32' if tf32 else ''}, images/s"
        print(f"| {label} (batch from the host) | {k:.0f} | {th:.0f} | {k / th:.2f} |", flush=True)
        print(f"| {label} (batch already on the GPU) | {kd:.0f} | {td:.0f} | {kd / td:.2f} |", flush=True)
    for name, dtype, tf32 in (("sgemm", "float32", False), ("sgemm, TF32 allowed,", "float32", True),
                              ("hgemm", "float16", False)):  # fmt: skip
        k, t = gemm(8192, dtype, tf32)
        print(f"| {name} 8192^3, TFLOP/s | {k:.1f} | {t:.1f} | {k / t:.2f} |", flush=True)
    for batch, c, hw in ((128, 64, 56),):
        k, t = conv_fwd_bwd(batch, c, hw)
        print(f"| conv2d 3x3 {c}->{c} {hw}x{hw} fwd+bwd, batch {batch}, images/s | {k:.0f} | {t:.0f} | {k / t:.2f} |",
              flush=True)  # fmt: skip
    print(f"host<->device traffic of the whole run: {kn.cuda.transfers()}")


if __name__ == "__main__":
    main()
