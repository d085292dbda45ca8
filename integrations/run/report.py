"""The reports of evaluation results: Table 1 of the paper (mean ± standard error over seeds,
non-dominated methods, hypervolume contributions) and the fronts of a preference sweep, as JSON
rows, CSV, Markdown and a plot. Pure functions of eval.json results; ``evaluate.py`` writes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mogd.pareto import hypervolume, non_dominated

from .runio import atomic_write_text

__all__ = [
    "markdown_table",
    "mean_se",
    "plot_front",
    "point",
    "reference_point",
    "significance",
    "significance_markdown",
    "summarise",
    "table_row",
    "write_csv",
    "write_json",
]


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2))


def point(result: dict[str, Any]) -> dict[str, float]:
    """A sweep's point of one eval.json result: each objective's score, the harmless ratio (when
    there is a cost) and the average score."""
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


def table_row(label: str, seed: int, result: dict[str, Any]) -> dict[str, Any]:
    """A row of compare.json: one method and seed, its objectives' scores with their evaluation
    standard errors, their per-prompt mean scores (where eval.json has them: :func:`significance`
    pairs methods by prompt), and the harmless ratio."""
    return {
        "method": label,
        "seed": seed,
        "scores": {n: o["score"] for n, o in result["objectives"].items()},
        "se": {n: o["se"] for n, o in result["objectives"].items()},
        "per_prompt": {
            n: o["per_prompt"] for n, o in result["objectives"].items() if "per_prompt" in o
        },
        "harmless_ratio": result["harmless_ratio"],
    }


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / √n; 0 for one value)."""
    n = len(values)
    if n < 2 or len(set(values)) == 1:  # (x + x + x) / 3 need not be x: identical rows are SE 0
        return (values[0] if n else float("nan")), 0.0
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def significance(
    summary: dict[str, Any], pairs: Sequence[tuple[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Differences of mean scores between methods, with a combined standard error.

    A method's mean over its seeds has the seed SE (sample std / √n, which holds each run's own
    evaluation noise). A method that is one model, SFT (its "seeds" are one evaluation), has no
    seed spread: its SE is its evaluation SE over prompts, the rows' ``"se"``. Unpaired:
    SE(a − b) = √(SE_a² + SE_b²), each SE the seed SE, or the mean evaluation SE where the seed
    SE is 0 (one seed, or identical rows), and z = (a − b) / SE(a − b).

    Paired (where every row of both methods carries ``"per_prompt"`` scores of the same
    prompts): every policy is evaluated on the same held-out prompts, so a prompt's difficulty,
    common to both, is no noise in their difference. With d_p = ā_p − b̄_p (each method's
    per-prompt score averaged over its seeds), SE(a − b) = √(sa² + sb² + s_d² / P): sa, sb the
    seed SEs (0 for SFT), s_d the std of d_p over the P prompts (the two evaluations' sampling
    noise and the prompt-by-method interaction; a's sampling noise is counted twice, in its seed
    SE and in s_d, so the paired SE errs on the large side). ``"paired"`` says which was used.
    Default pairs: every method against ``sft``, and ``gapo-p1`` / ``gapo-p2`` against ``mgda``."""
    names = summary["objectives"]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in summary["rows"]:
        by.setdefault(r["method"], []).append(r)
    if pairs is None:
        pairs = [(m, "sft") for m in by if m != "sft" and "sft" in by]
        pairs += [(g, "mgda") for g in ("gapo-p1", "gapo-p2") if g in by and "mgda" in by]

    def stat(method: str, name: str) -> tuple[float, float, float]:
        rows = by[method]
        mean, se = mean_se([r["scores"][name] for r in rows])
        eval_se = se
        if se == 0.0:
            evals = [r.get("se", {}).get(name, 0.0) for r in rows]
            eval_se = sum(evals) / len(evals)
        return mean, se, eval_se

    def prompt_means(method: str, name: str) -> list[float] | None:
        per = [r.get("per_prompt", {}).get(name) for r in by[method]]
        if not per or any(p is None for p in per) or len({len(p) for p in per}) != 1:
            return None
        return [sum(col) / len(col) for col in zip(*per, strict=True)]

    out = []
    for a, b in pairs:
        if a not in by or b not in by:
            continue
        for name in names:
            (ma, sa, ea), (mb, sb, eb) = stat(a, name), stat(b, name)
            pa, pb = prompt_means(a, name), prompt_means(b, name)
            paired = pa is not None and pb is not None and len(pa) == len(pb) > 1
            if paired:
                assert pa is not None and pb is not None
                d = [x - y for x, y in zip(pa, pb, strict=True)]
                _, sd = mean_se(d)
                se = math.sqrt(sa**2 + sb**2 + sd**2)
            else:
                se = math.sqrt(ea**2 + eb**2)
            out.append(
                {
                    "method": a,
                    "against": b,
                    "objective": name,
                    "difference": ma - mb,
                    "se": se,
                    "z": (ma - mb) / se if se > 0 else float("nan"),
                    "paired": paired,
                }
            )
    return out


def significance_markdown(rows: list[dict[str, Any]]) -> str:
    """The :func:`significance` rows as a table; |z| > 2 marked."""
    if not rows:
        return ""
    lines = [
        "\nDifferences (combined SE: seed SE of each side and, paired by prompt, the SE of the "
        "per-prompt differences; unpaired, SFT's evaluation SE):\n",
        "| method | against | objective | difference | combined SE | z |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " **" if abs(r["z"]) > 2 else ""
        lines.append(
            f"| {r['method']} | {r['against']} | {r['objective']} | {r['difference']:+.3f} | "
            f"{r['se']:.3f} | {r['z']:+.2f}{mark} |"
        )
    return "\n".join(lines) + "\n"


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
    """compare.md: the :func:`summarise` table with its notes, then one table per prompt group."""
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
        parts.append(f"\n{group} prompts:\n\n" + "\n".join(plain_table(sub, columns)) + "\n")
    return "".join(parts)


def plain_table(table: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """The Markdown lines of ``table``'s ``columns`` (mean ± standard error), nothing else."""
    lines = ["| method | " + " | ".join(c.replace("_", " ") for c in columns) + " |"]
    lines.append("|" + "---|" * (len(columns) + 1))
    for e in table:
        cells = [f"{e[c]:.3f} ± {e[c + '_se']:.3f}" for c in columns]
        lines.append(f"| {e['method']} | " + " | ".join(cells) + " |")
    return lines


def plot_front(path: Path, summary: dict[str, Any]) -> None:
    """front-seed{S}.png: each family's points of a sweep, the SFT policy and the reference point."""
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


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as CSV, one column per key any row has, written atomically."""
    import csv
    import io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
