"""Evaluation, preference sweeps and the method comparison of the GAPO paper (Table 1, Fig. 3).

    python integrations/evaluate.py evaluate --run runs/x          # a trained run
    python integrations/evaluate.py evaluate --sft --preset tiny   # the SFT policy itself
    python integrations/evaluate.py sweep --out runs/sweep [training options, e.g. --steps 40]
    python integrations/evaluate.py compare --out runs/compare --seeds 0 1 2 [training options]

``evaluate``: one response per held-out prompt (sampled with the run's decoding settings from a
fixed seed), then each objective's mean score, the harmless ratio (share of responses with
cost C < 0) and the average of the objectives' scores: the columns of the paper's Table 1.
An objective's score is its reward R, or −C for a cost, so higher is better in every column.

``sweep``: P-GAPO and MORLHF with preference (λ, 1 − λ) for λ ∈ {0.2, 0.4, 0.6, 0.8}, plus GAPO
p = 1 (the λ = 0.5 point of a two-objective P-GAPO front); writes ``front.png``, ``sweep.csv``
and ``sweep.json`` with each family's hypervolume (``mogd.pareto``, moocore).

``compare``: SFT, PPO-H, PPO-S, Safe RLHF, MGDA, GAPO p = 1 and GAPO p = 2 over several seeds;
writes ``compare.md`` and ``compare.csv`` (mean ± std over seeds) like the paper's Table 1.

Every training run lives in its own directory under ``--out`` and is reused when it finished
(``eval.json`` present) or resumed when it stopped midway, so an interrupted sweep continues.
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
    # trl.py would shadow the TRL package; import the package from the checkout instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "integrations"

from mogd.pareto import hypervolume, non_dominated

from . import presets
from .config import Config, config_hash, objective_names, parse_config, validate
from .dist import seed_everything
from .heldout import evaluate_policy
from .rlhf_mistral import train
from .runio import (
    CHECKPOINT,
    atomic_write_text,
    load_checkpoint,
    load_policy_weights,
    write_config,
    write_eval,
)

SWEEP_LAMBDAS = (0.2, 0.4, 0.6, 0.8)
# (label, training options) of the paper's Table 1 rows; SFT is the untrained policy
COMPARE_METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("SFT", {}),
    ("PPO-H", {"method": "ppo-h"}),
    ("PPO-S", {"method": "ppo-s"}),
    ("Safe RLHF", {"method": "safe-rlhf"}),
    ("MGDA", {"method": "mgda"}),
    ("GAPO p=1", {"method": "gapo", "p": 1.0}),
    ("GAPO p=2", {"method": "gapo", "p": 2.0}),
)


# ----------------------------------------------------------------------------- evaluate


def evaluate_run(run: Path, n_prompts: int | None = None) -> dict[str, Any]:
    """Evaluate the policy saved in ``run/checkpoint.pt`` (its config.json decides the preset)."""
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
    if (out / CHECKPOINT).is_file():
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


# ----------------------------------------------------------------------------- sweep


def sweep(base: Config, out: Path) -> dict[str, Any]:
    """P-GAPO and MORLHF fronts over λ, GAPO p=1 as P-GAPO's λ = 0.5 point; hypervolumes."""
    names = objective_names(base)
    if len(names) != 2:
        raise ValueError(
            f"sweep needs exactly two objectives (λ, 1 − λ); --objectives gives {names}"
        )
    runs: list[tuple[str, float, Config]] = []
    for lam in SWEEP_LAMBDAS:
        for method in ("pgapo", "morlhf"):
            cfg = dataclasses.replace(
                base,
                method=method,
                preference=[lam, 1.0 - lam],
                out=str(out / f"{method}-l{lam:g}-seed{base.seed}"),
            )
            runs.append((method, lam, cfg))
    runs.append(
        (
            "pgapo",
            0.5,
            dataclasses.replace(
                base,
                method="gapo",
                p=1.0,
                preference=None,
                out=str(out / f"gapo-p1-seed{base.seed}"),
            ),
        )
    )
    sft = evaluate_sft(dataclasses.replace(base, method="gapo", preference=None), out / "sft")
    points = []
    for family, lam, cfg in runs:
        validate(cfg)
        result = train_and_evaluate(cfg)
        points.append({"family": family, "lambda": lam, "run": cfg.out, **_row(result)})
    sft_point = [sft["objectives"][n]["score"] for n in names]
    all_xy = [[p[n] for n in names] for p in points] + [sft_point]
    lo = [min(v[j] for v in all_xy) for j in range(2)]
    hi = [max(v[j] for v in all_xy) for j in range(2)]
    # reference point: 10 % of the range below the worst value seen (the SFT point included),
    # so every evaluated point contributes and the two families share one reference
    reference = [lo[j] - 0.1 * max(hi[j] - lo[j], 1e-6) for j in range(2)]
    families = {}
    for family in ("pgapo", "morlhf"):
        xy = [[p[n] for n in names] for p in points if p["family"] == family]
        mask = non_dominated(xy)
        families[family] = {
            "hypervolume": hypervolume(xy, reference),
            "non_dominated": int(mask.sum()),
            "points": len(xy),
        }
    summary = {
        "objectives": names,
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
    styles = {"pgapo": ("o-", "P-GAPO (GAPO p=1 at λ=0.5)"), "morlhf": ("s--", "MORLHF")}
    for family, (style, label) in styles.items():
        pts = sorted(
            (p["lambda"], p[x_name], p[y_name]) for p in summary["points"] if p["family"] == family
        )
        hv = summary["families"][family]["hypervolume"]
        ax.plot([p[1] for p in pts], [p[2] for p in pts], style, label=f"{label}, HV {hv:.3g}")
        for lam, x, y in pts:
            ax.annotate(f"{lam:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot(*summary["sft"], "k*", markersize=10, label="SFT")
    ax.set_xlabel(f"{x_name} score (higher is better)")
    ax.set_ylabel(f"{y_name} score (higher is better)")
    ax.set_title("Preference sweep: λ on the first objective")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- compare


def compare(base: Config, out: Path, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Table 1: each method over ``seeds``, mean ± std of every column."""
    table = []
    for label, options in COMPARE_METHODS:
        rows = []
        for seed in seeds:
            slug = label.lower().replace(" ", "-").replace("=", "")
            cfg = dataclasses.replace(
                base, seed=seed, preference=None, out=str(out / f"{slug}-seed{seed}"), **options
            )
            validate(cfg)
            result = (
                evaluate_sft(cfg, Path(str(cfg.out))) if not options else train_and_evaluate(cfg)
            )
            rows.append(_row(result))
        entry: dict[str, Any] = {"method": label, "seeds": len(rows)}
        for key in rows[0]:
            values = [r[key] for r in rows]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
            entry[key], entry[f"{key}_std"] = mean, std
        table.append(entry)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "compare.csv", table)
    atomic_write_text(out / "compare.md", markdown_table(table, len(seeds)))
    return table


def markdown_table(table: list[dict[str, Any]], n_seeds: int) -> str:
    columns = [k for k in table[0] if k not in ("method", "seeds") and not k.endswith("_std")]
    head = "| method | " + " | ".join(c.replace("_", " ") for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for entry in table:
        cells = [f"{entry[c]:.3f} ± {entry[c + '_std']:.3f}" for c in columns]
        lines.append(f"| {entry['method']} | " + " | ".join(cells) + " |")
    note = (
        f"\nMean ± std over {n_seeds} seed(s). Objective columns: R for rewards, −C for "
        "costs (higher is better); harmless ratio: share of responses with C < 0; average: "
        "mean of the objective columns.\n"
    )
    return "\n".join(lines) + "\n" + note


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
    ev.add_argument("--run", help="run directory (holds config.json and checkpoint.pt)")
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
    cp = sub.add_parser(
        "compare",
        help="Table 1: SFT, PPO-H, PPO-S, Safe RLHF, MGDA, GAPO",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cp.add_argument("--out", default="runs/compare", help="directory of the comparison's runs")
    cp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per method")
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
        base = parse_config(rest)
        if base.resume is not None:
            raise ValueError(
                f"{args.command}: --resume is not an option here (interrupted runs "
                "under --out are resumed automatically)"
            )
        if args.command == "sweep":
            summary = sweep(base, Path(args.out))
            for family, info in summary["families"].items():
                print(
                    f"{family}: hypervolume {info['hypervolume']:.4g} "
                    f"({info['non_dominated']}/{info['points']} non-dominated)"
                )
            print(f"front written to {Path(args.out) / 'front.png'}")
        else:
            table = compare(base, Path(args.out), args.seeds)
            print(markdown_table(table, len(args.seeds)))
    except ValueError as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
