"""The CUDA backend's availability: whether this kiln was built with it and whether a GPU is there.

Every function is safe on any machine: without the toolkit at build time, a driver or a GPU, the
answers are False and 0."""

from __future__ import annotations

from . import _core


def is_built() -> bool:
    """True when kiln was compiled with its CUDA backend (the toolkit was found at build time)."""
    return bool(_core.cuda_is_built())


def device_count() -> int:
    """The number of usable CUDA devices (0 without a driver or a GPU)."""
    return int(_core.cuda_device_count())


def is_available() -> bool:
    """True when the CUDA backend is built and a device is present."""
    return bool(_core.cuda_is_available())


def status() -> str:
    """One line: the devices (name, compute capability, memory), or why there are none."""
    return str(_core.cuda_status())


def self_test() -> None:
    """Runs a small kernel on device 0 and checks its result; raises kn.Error when it fails or when
    no device is available."""
    _core.cuda_self_test()


def transfers() -> dict[str, int]:
    """Host<->device traffic since the process started: to_device_bytes, to_host_bytes,
    to_device_copies, to_host_copies. A training step on the GPU moves its batch in and the
    outputs it returns (the loss) out, nothing else."""
    return dict(_core.cuda_transfers())


def allow_tf32(on: bool = True) -> None:
    """Lets float32 matrix products and convolutions on the GPU use TensorFloat-32 (faster, with
    10-bit mantissas inside the products), as ``torch.backends.cuda.matmul.allow_tf32``. Off by
    default. Takes effect for the next calls."""
    _core.cuda_allow_tf32(bool(on))


def tf32_allowed() -> bool:
    """Whether float32 GPU matrix products and convolutions may use TensorFloat-32."""
    return bool(_core.cuda_tf32_allowed())


__all__ = [
    "is_built",
    "device_count",
    "is_available",
    "status",
    "self_test",
    "transfers",
    "allow_tf32",
    "tf32_allowed",
]
