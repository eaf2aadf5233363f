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
