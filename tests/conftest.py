import os
from pathlib import Path

import pytest

import kiln as kn

DATA_DIR = Path(os.environ.get("KILN_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(autouse=True)
def fresh_graph():
    """Each test builds in its own graph, so input names never collide between tests."""
    with kn.Graph() as g:
        yield g


def pytest_terminal_summary(terminalreporter):
    """ONNX's backend node tests (tests/test_onnx_backend.py): how many of the selected cases kiln
    passes, printed at the end of every run that includes them."""
    stats = terminalreporter.stats
    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        counts[outcome] = sum(
            1
            for r in stats.get(outcome, [])
            if "OnnxBackendNodeModelTest" in getattr(r, "nodeid", "") and getattr(r, "when", "call") == "call"
        )
    if counts["passed"] or counts["failed"]:
        terminalreporter.write_sep(
            "=",
            f"ONNX backend node tests: {counts['passed']} passed, {counts['failed']} failed "
            f"(of the selected cases; the rest of onnx's suite is not selected or is in tests/onnx_skips.txt)",
        )
