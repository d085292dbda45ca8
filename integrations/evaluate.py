"""Evaluation, preference sweeps, the method comparison of the GAPO paper (Table 1, Fig. 3) and
a reward-model audit.

    python integrations/evaluate.py evaluate --run runs/x          # a trained run
    python integrations/evaluate.py evaluate --sft --preset tiny   # the SFT policy itself
    python integrations/evaluate.py sweep --out runs/p [training options, e.g. --steps 40]
    python integrations/evaluate.py compare --out runs/p --seeds 0 1 2 [training options]
    python integrations/evaluate.py score --preset tiny --in rows.jsonl --out scored.jsonl

``evaluate``: ``--eval-samples`` responses per held-out prompt (sampled with the run's decoding
settings from a fixed seed), then each objective's mean score (± standard error over prompts),
the harmless ratio (share of responses with cost C < 0) and the average of the objectives'
scores: the columns of the paper's Table 1, over all prompts and per prompt group (tiny: benign
/ harmful). An objective's score is its reward R, or −C for a cost: higher is better everywhere.

``sweep``: P-GAPO, MORLHF and Rewarded Soups (the PPO-H and PPO-S policies' weights
interpolated) at the same preferences (λ, 1 − λ), λ ∈ ``--lambdas``; one hypervolume reference
point for all three (:func:`reference_point`); writes ``front.png``, ``sweep.csv``, ``sweep.json``.

``compare``: SFT, PPO-H, PPO-S, Safe RLHF, Fast RL, MGDA, GAPO p = 1 and GAPO p = 2 over several
seeds; writes ``compare.json`` (one flat row per method and seed), ``compare.md`` and
``compare.csv`` (mean ± standard error over seeds, non-dominated methods, hypervolume
contributions) like the paper's Table 1.

``score``: adds ``"rewards"`` (higher is better) and ``"cost"`` to ``{"prompt", "response"}`` rows.

Every training run lives in its own directory under ``--out`` (``<label>-seed<seed>``, shared by
sweep and compare) and is reused when it finished (``eval.json`` present) or resumed when it
stopped midway, so an interrupted protocol continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:
    # `python integrations/evaluate.py`: Python put integrations/ first on sys.path, where
    # trl.py would shadow the TRL package. Import the package from the checkout instead, with the
    # root after site-packages so that nothing in the checkout hides an installed distribution.
    del sys.path[0]
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    __package__ = "integrations"

import torch

from mogd.pareto import hypervolume, non_dominated

from . import presets
from .config import Config, config_hash, objective_names, parse_config, validate
from .dist import current, seed_everything
from .heldout import evaluate_policy
from .rlhf_mistral import train
from .runio import (
    atomic_write_text,
    has_checkpoint,
    load_checkpoint,
    load_policy_weights,
    read_checkpoint,
    write_config,
    write_eval,
)

# The preference grid every family of the sweep shares (λ on the first objective). At λ = 0.5,
# P-GAPO with two objectives is GAPO p = 1 exactly (α = ½, ½ on unit gradients), which is run.
SWEEP_LAMBDAS = (0.2, 0.5, 0.8)
SWEEP_FAMILIES = ("pgapo", "morlhf", "rs")
# (label, training options) of the paper's Table 1 rows; "sft" is the untrained policy
COMPARE_METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("sft", {}),
    ("ppo-h", {"method": "ppo-h"}),
    ("ppo-s", {"method": "ppo-s"}),
    ("safe-rlhf", {"method": "safe-rlhf"}),
    ("fast-rl", {"method": "fast-rl"}),
    ("mgda", {"method": "mgda"}),
    ("gapo-p1", {"method": "gapo", "p": 1.0}),
    ("gapo-p2", {"method": "gapo", "p": 2.0}),
)


# ----------------------------------------------------------------------------- evaluate


def evaluate_run(run: Path, n_prompts: int | None = None) -> dict[str, Any]:
    """Evaluate the policy of ``run``'s newest checkpoint (its config.json decides the preset)."""
    cfg = parse_config(["--resume", str(run), "--no-progress"])
    state = load_checkpoint(Path(run), cfg)
    seed_everything(cfg.seed)
    setup = presets.build_setup(cfg)
    load_policy_weights(state, setup.policy)
    return evaluate_policy(setup, setup.policy, cfg, n_prompts or cfg.eval_size)


def _check_same_run(out: Path, cfg: Config) -> None:
    """A directory reused by sweep/compare must hold a run of this very configuration."""
    path = out / "config.json"
    if path.is_file() and config_hash(Config(**json.loads(path.read_text()))) != (config_hash(cfg)):
        raise ValueError(
            f"{out} holds a run of another configuration (other training options?); "
            "pass another --out or delete it"
        )


def evaluate_sft(cfg: Config, out: Path) -> dict[str, Any]:
    """The SFT policy (the preset's policy before any RL), written to ``out/eval.json``."""
    _check_same_run(out, cfg)
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    seed_everything(cfg.seed)
    setup = presets.build_setup(cfg)
    result = evaluate_policy(setup, setup.policy, cfg, cfg.eval_size)
    if current().main:  # under torchrun every rank evaluates its share; one writes
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg)
        write_eval(out / "eval.json", result)
    return result


def train_and_evaluate(cfg: Config) -> dict[str, Any]:
    """Train ``cfg`` (reusing a finished run, resuming a stopped one) and return its eval.json."""
    out = Path(str(cfg.out))
    _check_same_run(out, cfg)
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    if has_checkpoint(out):
        cfg = parse_config(
            ["--resume", str(out), "--no-progress" if not cfg.progress else "--progress"]
        )
    if cfg.eval_size == 0:
        raise ValueError("--eval-size 0 skips the evaluation that sweep/compare need")
    train(cfg)
    return json.loads((out / "eval.json").read_text())


def _row(result: dict[str, Any]) -> dict[str, float]:
    row = {name: o["score"] for name, o in result["objectives"].items()}
    if result["harmless_ratio"] is not None:
        row["harmless_ratio"] = result["harmless_ratio"]
    row["average"] = result["average"]
    return row


def reference_point(points: Sequence[Sequence[float]]) -> list[float]:
    """The hypervolume reference of a sweep or comparison: per objective, the worst score seen
    (every family's points and SFT) minus 10 % of that objective's range, so that every point
    contributes and every family is measured from the same corner."""
    lo = [min(p[j] for p in points) for j in range(len(points[0]))]
    hi = [max(p[j] for p in points) for j in range(len(points[0]))]
    return [lo[j] - 0.1 * max(hi[j] - lo[j], 1e-6) for j in range(len(lo))]


# ----------------------------------------------------------------------------- sweep


def soup_weights(
    expert_a: dict[str, torch.Tensor], expert_b: dict[str, torch.Tensor], lam: float
) -> dict[str, torch.Tensor]:
    """Rewarded Soups (Ramé et al., NeurIPS 2023): θ(λ) = λ θ_a + (1 − λ) θ_b, the weight
    interpolation of two policies fine-tuned from the same start, one per objective."""
    if expert_a.keys() != expert_b.keys():
        raise ValueError("the two experts must have the same parameters (same preset and model)")
    return {n: lam * expert_a[n] + (1.0 - lam) * expert_b[n] for n in expert_a}


def evaluate_soup(
    cfg: Config, expert_a: Path, expert_b: Path, lam: float, out: Path
) -> dict[str, Any]:
    """Evaluate the soup of the checkpoints of runs ``expert_a`` (weight λ) and ``expert_b``,
    written to ``out/eval.json`` (reused when there)."""
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    experts = []
    for run in (expert_a, expert_b):
        load_checkpoint(run, parse_config(["--resume", str(run), "--no-progress"]))  # checks it
        experts.append(read_checkpoint(run)["policy"])
    seed_everything(cfg.seed)
    setup = presets.build_setup(cfg)
    params = dict(setup.policy.named_parameters())
    soup = soup_weights(experts[0], experts[1], lam)
    if not soup.keys() <= params.keys():
        raise ValueError(f"{expert_a}: its policy does not match the {cfg.preset} preset's model")
    with torch.no_grad():
        for name, value in soup.items():
            params[name].copy_(value)
    result = evaluate_policy(setup, setup.policy, cfg, cfg.eval_size)
    out.mkdir(parents=True, exist_ok=True)
    write_eval(out / "eval.json", result)
    return result


def sweep(base: Config, out: Path, lambdas: Sequence[float] = SWEEP_LAMBDAS) -> dict[str, Any]:
    """Fronts of P-GAPO, MORLHF and Rewarded Soups (RS) over the same λ grid, preference
    (λ, 1 − λ); one reference point for all three hypervolumes (:func:`reference_point`).

    P-GAPO at λ = 0.5 is the GAPO p = 1 run; RS interpolates the PPO-H (weight λ) and PPO-S
    runs. Runs are named as :func:`compare` names them, so a sweep and a comparison under the
    same ``out`` share SFT, PPO-H, PPO-S and GAPO p = 1.
    """
    names = objective_names(base)
    if len(names) != 2:
        raise ValueError(
            f"sweep needs exactly two objectives (λ, 1 − λ); --objectives gives {names}"
        )
    if not lambdas or not all(0 < lam < 1 for lam in lambdas):
        raise ValueError(f"--lambdas must lie in (0, 1); got {list(lambdas)}")
    seed = base.seed

    def run(label: str, **options: Any) -> Config:
        cfg = dataclasses.replace(base, out=str(out / f"{label}-seed{seed}"), **options)
        validate(cfg)
        return cfg

    sft = evaluate_sft(run("sft", method="gapo", preference=None), out / f"sft-seed{seed}")
    experts = [run("ppo-h", method="ppo-h", preference=None)]
    experts.append(run("ppo-s", method="ppo-s", preference=None))
    for cfg in experts:
        train_and_evaluate(cfg)
    points = []
    for lam in lambdas:
        pref = [lam, round(1.0 - lam, 12)]  # 1 - 0.8 is 0.19999999999999996: as typed
        results = {
            "pgapo": train_and_evaluate(
                run("gapo-p1", method="gapo", p=1.0, preference=None)
                if lam == 0.5
                else run(f"pgapo-l{lam:g}", method="pgapo", preference=pref)
            ),
            "morlhf": train_and_evaluate(run(f"morlhf-l{lam:g}", method="morlhf", preference=pref)),
            "rs": evaluate_soup(
                run("sft", method="gapo", preference=None),
                Path(str(experts[0].out)),
                Path(str(experts[1].out)),
                lam,
                out / f"rs-l{lam:g}-seed{seed}",
            ),
        }
        for family, result in results.items():
            points.append({"family": family, "lambda": lam, **_row(result)})
    sft_point = [sft["objectives"][n]["score"] for n in names]
    reference = reference_point([[p[n] for n in names] for p in points] + [sft_point])
    families = {}
    for family in SWEEP_FAMILIES:
        xy = [[p[n] for n in names] for p in points if p["family"] == family]
        families[family] = {
            "hypervolume": hypervolume(xy, reference),
            "non_dominated": int(non_dominated(xy).sum()),
            "points": len(xy),
        }
    summary = {
        "objectives": names,
        "lambdas": list(lambdas),
        "seed": seed,
        "reference": reference,
        "sft": sft_point,
        "families": families,
        "points": points,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.json", json.dumps(summary, indent=2))
    _write_csv(out / "sweep.csv", points)
    plot_front(out / "front.png", summary)
    return summary


def plot_front(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = summary["objectives"]
    fig, ax = plt.subplots(figsize=(6, 5))
    styles = {
        "pgapo": ("o-", "P-GAPO (GAPO p=1 at λ=0.5)"),
        "morlhf": ("s--", "MORLHF"),
        "rs": ("^:", "Rewarded Soups (PPO-H/PPO-S)"),
    }
    for family, (style, label) in styles.items():
        pts = sorted(
            (p["lambda"], p[x_name], p[y_name]) for p in summary["points"] if p["family"] == family
        )
        hv = summary["families"][family]["hypervolume"]
        ax.plot([p[1] for p in pts], [p[2] for p in pts], style, label=f"{label}, HV {hv:.3g}")
        for lam, x, y in pts:
            ax.annotate(f"{lam:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot(*summary["sft"], "k*", markersize=10, label="SFT")
    ax.plot(*summary["reference"], "kx", label="hypervolume reference")
    ax.set_xlabel(f"{x_name} score (higher is better)")
    ax.set_ylabel(f"{y_name} score (higher is better)")
    ax.set_title(f"Preference sweep (seed {summary['seed']}): λ on {x_name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- compare


def compare(base: Config, out: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """Table 1: every method of :data:`COMPARE_METHODS` over ``seeds``; writes
    ``out/compare.json`` (one flat row per method and seed, and the same per prompt group),
    ``compare.md`` (mean ± standard error over seeds, non-dominated methods, hypervolume
    contributions) and ``compare.csv``."""
    names = objective_names(base)
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for label, options in COMPARE_METHODS:
        for seed in seeds:
            cfg = dataclasses.replace(
                base, seed=seed, preference=None, out=str(out / f"{label}-seed{seed}"), **options
            )
            validate(cfg)
            result = (
                evaluate_sft(cfg, Path(str(cfg.out))) if not options else train_and_evaluate(cfg)
            )
            rows.append(_flat_row(label, seed, result))
            for group, part in result.get("groups", {}).items():
                groups.setdefault(group, []).append(_flat_row(label, seed, part))
    summary = {"objectives": names, "rows": rows, "groups": groups}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=2))
    table = summarise(summary)
    _write_csv(out / "compare.csv", table)
    atomic_write_text(out / "compare.md", markdown_table(table, summary))
    return summary


def _flat_row(label: str, seed: int, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": label,
        "seed": seed,
        "scores": {n: o["score"] for n, o in result["objectives"].items()},
        "harmless_ratio": result["harmless_ratio"],
    }


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / √n; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def summarise(summary: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> list[dict]:
    """Per method (in first-seen order): mean ± SE over seeds of every objective score, the
    harmless ratio and the average score; whether the mean point is non-dominated among the
    methods; its hypervolume contribution HV(all) − HV(all but it), from
    :func:`reference_point` of the methods' mean points."""
    names = summary["objectives"]
    rows = summary["rows"] if rows is None else rows
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    table = []
    for method, rs in by_method.items():
        entry: dict[str, Any] = {"method": method, "seeds": len(rs)}
        columns = {n: [r["scores"][n] for r in rs] for n in names}
        if rs[0]["harmless_ratio"] is not None:
            columns["harmless_ratio"] = [r["harmless_ratio"] for r in rs]
        columns["average"] = [sum(r["scores"][n] for n in names) / len(names) for r in rs]
        for key, values in columns.items():
            entry[key], entry[f"{key}_se"] = mean_se(values)
        table.append(entry)
    points = [[e[n] for n in names] for e in table]
    reference = reference_point(points)
    mask = non_dominated(points)
    total = hypervolume(points, reference)
    for i, e in enumerate(table):
        others = points[:i] + points[i + 1 :]
        e["non_dominated"] = bool(mask[i])
        e["hv_contribution"] = total - (hypervolume(others, reference) if others else 0.0)
    return table


def markdown_table(table: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    names = summary["objectives"]
    columns = [k for k in table[0] if k in names or k in ("harmless_ratio", "average")]
    head = "| method | " + " | ".join(c.replace("_", " ") for c in columns)
    lines = [head + " | non-dominated | HV contribution |", "|" + "---|" * (len(columns) + 3)]
    for e in table:
        cells = [f"{e[c]:.3f} ± {e[c + '_se']:.3f}" for c in columns]
        mark = "yes" if e["non_dominated"] else ""
        lines.append(
            f"| {e['method']} | " + " | ".join(cells) + f" | {mark} | {e['hv_contribution']:.4f} |"
        )
    seeds = sorted({r["seed"] for r in summary["rows"]})
    note = (
        f"\nMean ± standard error over seeds {seeds}. Objective columns: R for rewards, −C for "
        "costs (higher is better); harmless ratio: share of responses with C < 0; average: mean "
        "of the objective columns. Non-dominated and hypervolume contribution (HV of all "
        "methods' mean points minus HV without the method) on the objective columns, reference "
        "point 10 % of each range below the worst method.\n"
    )
    parts = ["\n".join(lines) + "\n" + note]
    for group, rows in summary.get("groups", {}).items():
        sub = summarise(summary, rows)
        parts.append(f"\n{group} prompts:\n\n" + "\n".join(_plain_table(sub, columns)) + "\n")
    return "".join(parts)


def _plain_table(table: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(c.replace("_", " ") for c in columns) + " |"]
    lines.append("|" + "---|" * (len(columns) + 1))
    for e in table:
        cells = [f"{e[c]:.3f} ± {e[c + '_se']:.3f}" for c in columns]
        lines.append(f"| {e['method']} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- score


def score_file(cfg: Config, src: Path, dst: Path) -> int:
    """Score ``{"prompt", "response"}`` JSONL rows with the preset's scorers (an audit of the
    reward models): each row gets ``"rewards": {objective: higher-is-better score}`` (R, or −C)
    and, for cost objectives, ``"cost"``: C (a number with one cost objective, else
    ``{objective: C}``). Returns the number of rows."""
    rows = []
    for i, line in enumerate(src.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or not isinstance(row.get("response"), str)
        ):
            raise ValueError(
                f"--in {src}:{i + 1}: each row needs string fields prompt and response"
            )
        rows.append(row)
    scorers = presets.select_scorers(cfg, presets.build_setup(cfg))
    prompts = [r["prompt"] for r in rows]
    responses = [r["response"] for r in rows]
    raw = torch.stack([s.score(prompts, responses).float() for s in scorers]) if rows else None
    costs = [k for k, s in enumerate(scorers) if s.kind == "cost"]
    out = []
    for j, row in enumerate(rows):
        assert raw is not None
        row = dict(row)
        row["rewards"] = {
            s.name: float(raw[k, j]) * (1.0 if s.kind == "reward" else -1.0)
            for k, s in enumerate(scorers)
        }
        if len(costs) == 1:
            row["cost"] = float(raw[costs[0], j])
        elif costs:
            row["cost"] = {scorers[k].name: float(raw[k, j]) for k in costs}
        out.append(json.dumps(row, ensure_ascii=False) + "\n")
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst, "".join(out))
    return len(rows)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv
    import io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate runs, sweep preferences, compare methods (paper Table 1 / Fig. 3). "
        "sweep and compare accept every training option of rlhf_mistral.py (e.g. --steps).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser(
        "evaluate",
        help="Table 1 columns of one run or of the SFT policy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument("--run", help="run directory (holds config.json and checkpoints/)")
    ev.add_argument("--sft", action="store_true", help="evaluate the preset's SFT policy")
    ev.add_argument(
        "--eval-size",
        type=int,
        default=None,
        help="held-out prompts to use; None = the run's --eval-size (all)",
    )
    sw = sub.add_parser(
        "sweep",
        help="P-GAPO and MORLHF fronts over λ, with hypervolumes",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sw.add_argument("--out", default="runs/sweep", help="directory of the sweep's runs")
    sw.add_argument(
        "--lambdas",
        type=float,
        nargs="+",
        default=list(SWEEP_LAMBDAS),
        help="the preference grid (λ on the first objective) every family shares",
    )
    cp = sub.add_parser(
        "compare",
        help="Table 1: SFT, PPO-H, PPO-S, Safe RLHF, MGDA, GAPO",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cp.add_argument("--out", default="runs/compare", help="directory of the comparison's runs")
    cp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per method")
    sc = sub.add_parser(
        "score",
        help="score {prompt, response} JSONL rows with the preset's scorers (reward audit)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sc.add_argument("--in", dest="src", required=True, help="JSONL rows with prompt, response")
    sc.add_argument("--out", dest="dst", required=True, help="where the scored rows go")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    try:
        if args.command == "evaluate":
            if args.sft == (args.run is not None):
                raise ValueError("evaluate: pass exactly one of --run DIR and --sft")
            if args.run is not None:
                if rest:
                    raise ValueError(f"evaluate --run: unrecognised options {' '.join(rest)}")
                result = evaluate_run(Path(args.run), args.eval_size)
            else:  # preset and decoding options as for training (--preset, --cache-dir, ...)
                cfg = parse_config([*rest, "--no-progress"])
                cfg = dataclasses.replace(cfg, eval_size=args.eval_size or cfg.eval_size)
                seed_everything(cfg.seed)
                setup = presets.build_setup(cfg)
                result = evaluate_policy(setup, setup.policy, cfg, cfg.eval_size)
            print(json.dumps(result, indent=2))
            return 0
        if args.command == "score":  # preset options as for training (--preset, --cache-dir)
            n = score_file(parse_config(rest), Path(args.src), Path(args.dst))
            print(f"{n} rows scored into {args.dst}")
            return 0
        base = parse_config(rest)
        if base.resume is not None:
            raise ValueError(
                f"{args.command}: --resume is not an option here (interrupted runs "
                "under --out are resumed automatically)"
            )
        if args.command == "sweep":
            summary = sweep(base, Path(args.out), args.lambdas)
            print(f"reference point {[round(v, 4) for v in summary['reference']]}")
            for family, info in summary["families"].items():
                print(
                    f"{family}: hypervolume {info['hypervolume']:.4g} "
                    f"({info['non_dominated']}/{info['points']} non-dominated)"
                )
            print(f"front written to {Path(args.out) / 'front.png'}")
        else:
            summary = compare(base, Path(args.out), args.seeds)
            print(markdown_table(summarise(summary), summary))
    except ValueError as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
