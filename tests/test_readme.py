"""The README's usage example runs as written and ends on the Pareto set of its two objectives."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs_and_reaches_the_pareto_set() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    info = namespace["info"]
    # The two losses want out_0 = +1 and out_0 = -1: every point with out_0 in [-1, 1] and out_1 = 0 is
    # Pareto-optimal, and there the two gradients are antipodal in the out_0 direction.
    out = namespace["model"](namespace["x"]).detach()
    assert out[:, 0].abs().max() <= 1.05
    assert out[:, 1].abs().max() <= 0.05
    assert float(info.cosine[0, 1]) < 0
