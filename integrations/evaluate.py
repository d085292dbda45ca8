"""Evaluation, preference sweeps, the method comparison of the GAPO paper (Table 1, Fig. 3) and
a reward-model audit.

    python integrations/evaluate.py evaluate --run-dir runs/x      # a trained run (or --run)
    torchrun --nproc_per_node 8 integrations/evaluate.py evaluate --run-dir runs/x  # sharded
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
point for all three (:func:`~integrations.run.report.reference_point`); writes ``front-seed{S}.png``,
``sweep-seed{S}.csv``, ``sweep-seed{S}.json`` (per seed, as the runs).

``compare``: SFT, PPO-H, PPO-S, Safe RLHF, Fast RL, MGDA, GAPO p = 1 and GAPO p = 2 over several
seeds; writes ``compare.json`` (one flat row per method and seed), ``compare.md`` and
``compare.csv`` (mean ± standard error over seeds, non-dominated methods, hypervolume
contributions) like the paper's Table 1.

``score``: adds ``"rewards"`` (higher is better) and ``"cost"`` to ``{"prompt", "response"}`` rows.

Every training run lives in its own directory under ``--out`` (``<label>-seed<seed>``, shared by
sweep and compare) and is reused when it finished (``eval.json`` present) or resumed when it
stopped midway, so an interrupted protocol continues.

This module holds what trains (:func:`sweep`, :func:`compare`) and the command line; the policies
evaluated without training are in :mod:`integrations.run.evaluations`, the held-out sampling and
scoring in :mod:`integrations.run.heldout`, the tables, hypervolumes and plots in
:mod:`integrations.run.report`.
"""

from __future__ import annotations

import argparse
import json
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

from mogd.pareto import hypervolume, non_dominated

from .ppo.methods import METHODS
from .rlhf_mistral import train
from .run import presets
from .run.config import Config
from .run.dist import close_distributed, current, seed_everything
from .run.evaluations import check_same_run, evaluate, evaluate_run, evaluate_sft, evaluate_soup
from .run.heldout import score_rows
from .run.parse import parse_config
from .run.presets import objective_names
from .run.report import (
    markdown_table,
    plot_front,
    point,
    reference_point,
    significance,
    significance_markdown,
    summarise,
    table_row,
    write_csv,
    write_json,
)
from .run.runio import atomic_write_text, has_checkpoint
from .run.validate import validate

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


# ----------------------------------------------------------------------------- training runs


def for_method(cfg: Config) -> Config:
    """``cfg`` with the critic its method can have: a scalarised method (morlhf, fast-rl) has no
    score model per stream, so the paper preset's ``score`` critics become heads on the policy's
    features (as :func:`~integrations.run.parse.make_config` does for one run)."""
    scalarised = METHODS[cfg.algorithm.method].streams == "scalarised"
    if scalarised and cfg.algorithm.critic_init == "score" and cfg.ppo.advantage == "gae":
        return cfg.replace(critic_init="head")
    return cfg


def train_and_evaluate(cfg: Config) -> dict[str, Any]:
    """Train ``cfg`` (reusing a finished run, resuming a stopped one) and return its eval.json."""
    out = Path(str(cfg.run.out))
    check_same_run(out, cfg)
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    if has_checkpoint(out):
        cfg = parse_config(
            ["--resume", str(out), "--progress" if cfg.run.progress else "--no-progress"]
        )
    if cfg.eval.eval_size == 0:
        raise ValueError("--eval-size 0 skips the evaluation that sweep/compare need")
    train(cfg)
    return json.loads((out / "eval.json").read_text())


# ----------------------------------------------------------------------------- sweep


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
    seed = base.run.seed

    def run(label: str, **options: Any) -> Config:
        cfg = for_method(base.replace(out=str(out / f"{label}-seed{seed}"), **options))
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
                Path(str(experts[0].run.out)),
                Path(str(experts[1].run.out)),
                lam,
                out / f"rs-l{lam:g}-seed{seed}",
            ),
        }
        for family, result in results.items():
            points.append({"family": family, "lambda": lam, **point(result)})
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
    # one file per seed, as the runs are: the sweeps of several seeds share an --out
    write_json(out / f"sweep-seed{seed}.json", summary)
    write_csv(out / f"sweep-seed{seed}.csv", points)
    plot_front(out / f"front-seed{seed}.png", summary)
    return summary


# ----------------------------------------------------------------------------- compare


def compare(base: Config, out: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """Table 1: every method of :data:`COMPARE_METHODS` over ``seeds``; writes
    ``out/compare.json`` (one flat row per method and seed, and the same per prompt group; the
    differences against SFT and MGDA with their standard errors under ``"significance"``),
    ``compare.md`` (mean ± standard error over seeds, non-dominated methods, hypervolume
    contributions, the differences' table) and ``compare.csv``."""
    names = objective_names(base)
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for label, options in COMPARE_METHODS:
        for seed in seeds:
            run = str(out / f"{label}-seed{seed}")
            cfg = for_method(base.replace(seed=seed, preference=None, out=run, **options))
            validate(cfg)
            result = evaluate_sft(cfg, Path(run)) if not options else train_and_evaluate(cfg)
            rows.append(table_row(label, seed, result))
            for group, part in result.get("groups", {}).items():
                groups.setdefault(group, []).append(table_row(label, seed, part))
    summary: dict[str, Any] = {"objectives": names, "rows": rows, "groups": groups}
    summary["significance"] = significance(summary)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", summary)
    table = summarise(summary)
    write_csv(out / "compare.csv", table)
    text = markdown_table(table, summary) + significance_markdown(summary["significance"])
    atomic_write_text(out / "compare.md", text)
    return summary


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
    scored = score_rows(presets.select_scorers(cfg, presets.build_setup(cfg)), rows)
    out = [json.dumps(row, ensure_ascii=False) + "\n" for row in scored]
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst, "".join(out))
    return len(rows)


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
    ev.add_argument(
        "--run-dir",
        "--run",
        dest="run",
        help="run directory (holds config.json and checkpoints/); under torchrun spell it "
        "--run-dir (torchrun reads --run as its own --run-path)",
    )
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
                raise ValueError("evaluate: pass exactly one of --run-dir DIR and --sft")
            if args.run is not None:
                if rest:
                    raise ValueError(f"evaluate --run-dir: unrecognised options {' '.join(rest)}")
                result = evaluate_run(Path(args.run), args.eval_size)
            else:  # preset and decoding options as for training (--preset, --cache-dir, ...)
                cfg = parse_config([*rest, "--no-progress"])
                seed_everything(cfg.run.seed)
                setup = presets.build_setup(cfg)
                result = evaluate(cfg, setup, setup.policy, args.eval_size or cfg.eval.eval_size)
            main = current().main  # under torchrun every rank holds the same result
            close_distributed()
            if main:
                print(json.dumps(result, indent=2))
            return 0
        if args.command == "score":  # preset options as for training (--preset, --cache-dir)
            n = score_file(parse_config(rest), Path(args.src), Path(args.dst))
            print(f"{n} rows scored into {args.dst}")
            return 0
        base = parse_config(rest)
        if base.run.resume is not None:
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
            front = Path(args.out) / f"front-seed{summary['seed']}.png"
            print(f"front written to {front}")
        else:
            summary = compare(base, Path(args.out), args.seeds)
            print(markdown_table(summarise(summary), summary))
    except ValueError as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
