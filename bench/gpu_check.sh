#!/usr/bin/env bash
# The GPU check of the CUDA backend, for a fresh machine with an NVIDIA GPU, the CUDA toolkit,
# cuDNN and PyTorch (and kiln's build requirements: scikit-build-core, nanobind, scipy-openblas32,
# nlohmann-json; nothing is downloaded). Builds kiln with its CUDA backend, runs the CUDA tests, and
# prints the table of bench/gpu_bench.py. Under 8 minutes on one H200 with 16 cores.
#   bash bench/gpu_check.sh
# PYTHON chooses the interpreter, KILN_PIP_TARGET installs kiln into that folder (pip --target) instead
# of the environment, KILN_CUDA_ARCHITECTURES builds only those (e.g. 90-real, for a faster build).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
start=$SECONDS
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== build"
args=(-Ccmake.define.KILN_CUDA=AUTO -Cbuild-dir=build/gpu)
[ -n "${KILN_CUDA_ARCHITECTURES:-}" ] && args+=(-Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$KILN_CUDA_ARCHITECTURES")
[ -n "${KILN_PIP_TARGET:-}" ] && args+=(--target "$KILN_PIP_TARGET" --upgrade)
$PY -m pip install -q --no-build-isolation --no-deps . "${args[@]}" || exit 1
echo "built in $((SECONDS - start)) s"
$PY -c "import kiln as kn; print(kn.cuda.status(), '| conv on CUDA:', kn._core.op_info('conv')['has_cuda_kernel']); kn.cuda.self_test(); print('self test passed')" || exit 1
workers=()
$PY -c "import xdist" 2>/dev/null && workers=(-n "${KILN_TEST_WORKERS:-8}")

echo "== CUDA tests"
# One CPU thread per test process: the processes share the cores, and a pool's workers spin a
# while after each kernel (cpu/parallel.cpp), which beside other processes only takes their time.
KILN_NUM_THREADS=1 timeout "${KILN_TEST_TIMEOUT:-300}" $PY -m pytest -q -p no:cacheprovider -rf --tb=line "${workers[@]}" tests/test_cuda.py tests/test_cuda_ops.py tests/test_float16.py 2>&1 | tail -60
tests=${PIPESTATUS[0]}
echo "tests done at $((SECONDS - start)) s"

echo "== GPU table"
(cd bench && $PY gpu_bench.py "${KILN_BENCH_RUNS:-10}") || exit 1
echo "total $((SECONDS - start)) s"
exit $tests
