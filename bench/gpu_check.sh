#!/usr/bin/env bash
# The GPU check of the CUDA backend, for a fresh machine with an NVIDIA GPU, the CUDA toolkit,
# cuDNN and PyTorch (and kiln's build requirements: scikit-build-core, nanobind, scipy-openblas32,
# nlohmann-json; nothing is downloaded). Builds kiln with KILN_CUDA=ON, runs the CUDA tests, and
# prints the table of bench/gpu_bench.py. Under 8 minutes on one H200 with 16 cores.
#   bash bench/gpu_check.sh            (PYTHON=... to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
start=$SECONDS
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== build (KILN_CUDA=ON)"
$PY -m pip install -q --no-build-isolation --no-deps . -Ccmake.define.KILN_CUDA=ON -Cbuild-dir=build/gpu || exit 1
echo "built in $((SECONDS - start)) s"
$PY -c "import kiln as kn; print(kn.cuda.status()); kn.cuda.self_test(); print('self test passed')" || exit 1

echo "== CUDA tests"
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cuda_ops.py 2>&1 | tail -40
tests=${PIPESTATUS[0]}
echo "tests done at $((SECONDS - start)) s"

echo "== GPU table"
(cd bench && $PY gpu_bench.py) || exit 1
echo "total $((SECONDS - start)) s"
exit $tests
