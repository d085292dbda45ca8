"""The evaluation protocol's math: Fast RL's reward weights, Rewarded Soups, the comparison
table's dominance marks and hypervolume contributions, the scorer audit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations import evaluate
from integrations.ppo.multipliers import RewardWeights
from integrations.run import presets
from integrations.run.evaluations import soup_weights
from integrations.run.parse import make_config
from integrations.run.report import (
    markdown_table,
    mean_se,
    reference_point,
    significance,
    summarise,
)

finite = st.floats(-5.0, 5.0, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=8), st.floats(0.01, 1.0))
def test_reward_weights_follow_the_exponentiated_gradient_closed_form(
    batches: list[tuple[float, float]], lr: float
) -> None:
    w = RewardWeights(2, lr)
    assert torch.equal(w.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    for means in batches:
        w.update(torch.tensor(means))
    # mirror descent from uniform: w_i ∝ exp(−η Σ_t r̄_i,t), computed independently in float64
    # from the float32 means the update is given (rounding them is the caller's, not the update's)
    seen = [torch.tensor(m).tolist() for m in batches]
    totals = [sum(m[i] for m in seen) for i in range(2)]
    z = [math.exp(-lr * (t - min(totals))) for t in totals]
    expected = [v / sum(z) for v in z]
    torch.testing.assert_close(w.weights, torch.tensor(expected, dtype=torch.float64))
    assert abs(float(w.weights.sum()) - 1.0) < 1e-12


def test_reward_weights_move_to_the_lagging_objective_and_round_trip() -> None:
    w = RewardWeights(2, 0.5)
    w.update(torch.tensor([2.0, -1.0]))  # the second objective lags: it gains weight
    assert w.weights[1] > 0.5 > w.weights[0]
    again = RewardWeights(2, 0.5)
    again.load_state_dict(w.state_dict())
    assert torch.equal(again.weights, w.weights)
    with pytest.raises(ValueError, match="finite"):
        w.update(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="lr"):
        RewardWeights(2, 0.0)


def test_soup_weights_interpolate_linearly() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
    b = {"w": torch.tensor([-1.0, 0.0]), "b": torch.tensor(1.0)}
    soup = soup_weights(a, b, 0.25)
    torch.testing.assert_close(soup["w"], torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(soup["b"], torch.tensor(1.5))
    assert torch.equal(soup_weights(a, b, 1.0)["w"], a["w"])
    with pytest.raises(ValueError, match="same parameters"):
        soup_weights(a, {"w": b["w"]}, 0.5)


def _rows(points: dict[str, list[tuple[float, float]]]) -> dict:
    rows = [
        {"method": m, "seed": s, "scores": {"helpful": x, "harmless": y}, "harmless_ratio": 0.9}
        for m, pts in points.items()
        for s, (x, y) in enumerate(pts)
    ]
    return {"objectives": ["helpful", "harmless"], "rows": rows}


def test_summarise_marks_dominance_and_hypervolume_contributions() -> None:
    summary = _rows(
        {
            "a": [(1.0, 0.0), (3.0, 0.0)],  # mean (2, 0)
            "b": [(0.0, 2.0), (0.0, 2.0)],  # mean (0, 2)
            "c": [(1.0, 1.0), (1.0, 1.0)],  # mean (1, 1): non-dominated, inside the corner
            "d": [(0.5, 0.5), (0.5, 0.5)],  # dominated by c
        }
    )
    table = {e["method"]: e for e in summarise(summary)}
    assert table["a"]["helpful"] == 2.0 and table["a"]["helpful_se"] == pytest.approx(1.0)
    assert table["b"]["harmless_se"] == 0.0 and table["a"]["average"] == 1.0
    assert [table[m]["non_dominated"] for m in "abcd"] == [True, True, True, False]
    # reference: 10 % of the range below the minimum on each axis = (-0.2, -0.2)
    r = -0.2
    # exclusive areas by hand: a's strip x in (1, 2], y in (r, 0]; b's strip y in (1, 2],
    # x in (r, 0]; c's square (0, 1]² less the quarter (0, 0.5]² that d also covers
    assert table["a"]["hv_contribution"] == pytest.approx((2 - 1) * (0 - r))
    assert table["b"]["hv_contribution"] == pytest.approx((2 - 1) * (0 - r))
    assert table["c"]["hv_contribution"] == pytest.approx(1.0 - 0.25)
    assert table["d"]["hv_contribution"] == pytest.approx(0.0)
    text = markdown_table(list(table.values()), summary)
    assert "| a | 2.000 ± 1.000 |" in text and "non-dominated" in text


def test_reference_point_is_below_every_point() -> None:
    ref = reference_point([[1.0, 5.0], [3.0, 4.0]])
    assert ref == pytest.approx([0.8, 3.9])


class _Fixed:
    def __init__(self, name: str, kind: str, value: float) -> None:
        self.name, self.kind, self.value = name, kind, value

    def score(self, prompts, responses):
        return torch.tensor([self.value + len(r) for r in responses], dtype=torch.float32)


def test_score_file_adds_rewards_and_cost(tmp_path, monkeypatch) -> None:
    class FakeSetup:
        scorers = [_Fixed("helpful", "reward", 0.5), _Fixed("harmless", "cost", -2.0)]

    monkeypatch.setattr(presets, "build_setup", lambda cfg: FakeSetup())
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        json.dumps({"prompt": "q", "response": "abc", "id": 7})
        + "\n\n"
        + json.dumps({"prompt": "q2", "response": ""})
        + "\n"
    )
    assert evaluate.main(["score", "--preset", "tiny", "--in", str(src), "--out", str(dst)]) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert rows[0] == {
        "prompt": "q",
        "response": "abc",
        "id": 7,
        "rewards": {"helpful": 3.5, "harmless": -1.0},
        "cost": 1.0,
    }
    assert rows[1]["rewards"] == {"helpful": 0.5, "harmless": 2.0} and rows[1]["cost"] == -2.0
    src.write_text(json.dumps({"prompt": "q"}) + "\n")
    assert evaluate.main(["score", "--in", str(src), "--out", str(dst)]) == 2
    with pytest.raises(ValueError, match="prompt and response"):
        evaluate.score_file(make_config("tiny"), src, dst)


def _prompt_rows(method: str, per_seed: list[list[float]]) -> list[dict]:
    return [
        {
            "method": method,
            "seed": s,
            "scores": {"r": sum(p) / len(p)},
            "se": {"r": float(np.std(p, ddof=1) / math.sqrt(len(p)))},
            "per_prompt": {"r": p},
        }
        for s, p in enumerate(per_seed)
    ]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 4), st.integers(3, 40))
def test_paired_significance_matches_a_float64_reference(
    seed: int, seeds: int, prompts: int
) -> None:
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 2.0, prompts)  # shared by every policy: no noise in a difference
    sft = [list(difficulty + rng.normal(0, 0.3, prompts))] * 3  # one model, identical rows
    run = [list(difficulty + 0.2 + rng.normal(0, 0.3, prompts)) for _ in range(seeds)]
    summary = {"objectives": ["r"], "rows": _prompt_rows("sft", sft) + _prompt_rows("gapo-p1", run)}
    (row,) = significance(summary)
    # reference: seed SE of the run's per-seed means, SE of the per-prompt differences
    a = np.asarray(run, dtype=np.float64)
    b = np.asarray(sft[0], dtype=np.float64)
    seed_se = a.mean(1).std(ddof=1) / math.sqrt(seeds)
    d = a.mean(0) - b
    se = math.sqrt(seed_se**2 + d.var(ddof=1) / prompts)
    assert row["paired"] is True
    assert math.isclose(row["difference"], a.mean() - b.mean(), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(row["se"], se, rel_tol=1e-9)
    # the shared prompt difficulty (std 2, against noise 0.3) dominates the unpaired SE, not
    # the paired one (checked where the spreads are estimated from enough prompts)
    unpaired = [{k: v for k, v in r.items() if k != "per_prompt"} for r in summary["rows"]]
    (plain,) = significance({"objectives": ["r"], "rows": unpaired})
    assert plain["paired"] is False
    if prompts >= 20:
        assert row["se"] < plain["se"]


def test_significance_is_unpaired_when_prompt_counts_differ() -> None:
    summary = {
        "objectives": ["r"],
        "rows": _prompt_rows("sft", [[1.0, 2.0, 3.0]])
        + _prompt_rows("mgda", [[1.0, 2.0], [2.0, 3.0]]),
    }
    (row,) = significance(summary)
    assert row["paired"] is False
    assert math.isclose(row["se"], math.sqrt(0.5**2 + 1 / 3))  # seed SE 0.5; SFT eval SE 1 / √3


def test_identical_rows_have_no_seed_spread() -> None:
    x = 1.855
    assert sum([x, x, x]) / 3 != x  # the rounding that made SFT's 3 identical rows a "spread"
    assert mean_se([x, x, x]) == (x, 0.0)
