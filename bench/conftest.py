"""Benchmarks compare kiln with numpy and, where installed, PyTorch in the same run.

Run on a quiet machine: `python -m pytest bench/ --benchmark-only`. After the run, a table of
ratios (reference time / kiln time: above 1 means kiln is faster) is printed.
"""

import platform

import pytest

_results: dict[str, dict[str, float]] = {}


@pytest.fixture
def record(benchmark):
    """record(case, engine, fn): benchmarks fn and files its median time under case/engine."""

    def run(case: str, engine: str, fn, *args):
        benchmark.group = case
        benchmark.extra_info["engine"] = engine
        benchmark.pedantic(fn, args=args, rounds=benchmark_rounds(case), iterations=1, warmup_rounds=3)
        _results.setdefault(case, {})[engine] = benchmark.stats.stats.median

    return run


@pytest.fixture
def record_value():
    """record_value(case, engine, seconds): files a time measured elsewhere (a median printed by
    a program such as kiln-run --bench) beside the benchmarked ones."""

    def put(case: str, engine: str, seconds: float) -> None:
        _results.setdefault(case, {})[engine] = seconds

    return put


def benchmark_rounds(case: str) -> int:
    if "kNN" in case:
        return 3
    if "train step" in case or "conv fwd" in case:
        return 30
    return 20 if "1024" in case or "16M" in case else 200


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    tr = terminalreporter
    tr.section("kiln ratios (median time of the reference / kiln's; > 1: kiln faster)")
    tr.write_line(f"machine: {platform.machine()} {platform.processor() or ''} {platform.python_version()}")
    for case, times in _results.items():
        k = times.get("kiln")
        cells = [f"kiln {k * 1e6:10.1f} us" if k else "kiln -"]
        for engine, t in sorted(times.items()):
            if engine != "kiln" and k:
                cells.append(f"{engine} {t * 1e6:10.1f} us (x{t / k:5.2f})")
        tr.write_line(f"{case:34s} " + "  ".join(cells))
