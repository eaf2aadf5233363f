"""The README's first example runs and learns its toy problem."""

import re
from pathlib import Path

import kiln as kn


def test_readme_example_trains_to_full_accuracy(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    assert len(code.strip().splitlines()) <= 20
    with kn.Graph():
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    loss, acc = re.findall(r"loss ([\d.]+), accuracy ([\d.]+)", out)[0]
    assert float(loss) < 0.4 and float(acc) >= 0.95, out
