"""A checkout never hides an installed distribution, and the pipeline never reaches for the Hub.

transformers >= 5.25 imports Hugging Face's hub-kernels package ``kernels``. A notebook, a
``python -c`` or ``python -m pytest`` started in the checkout has the root first on ``sys.path``,
so any top-level package of the root whose name an installed distribution also uses would be
imported in its place (a top-level ``kernels/`` did exactly that). These tests run such a process
and check every name the checkout can put on ``sys.path``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Folders that Python puts first on sys.path: the root (notebooks, `python -c`, `python -m`), the
# tests (pytest's rootdir-relative imports) and the folders whose scripts are run as files.
SEARCHED = ("", "tests", "bench", "examples")
# integrations/trl.py keeps its import path (mogd.integrations.trl); the scripts in integrations/
# take their own folder off sys.path before importing anything, and trl.py refuses to be imported
# as the top-level `trl` with an ImportError that says so.
SCRIPT_FOLDERS = {"integrations": {"trl"}}


def importable_names(folder: Path) -> set[str]:
    """Top-level names a folder on sys.path makes importable and that win over site-packages:
    modules and regular packages (a namespace folder loses to any installed package)."""
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.parent.name for p in folder.glob("*/__init__.py")}
    return names


def test_no_checkout_name_shadows_an_installed_distribution():
    installed = importlib.metadata.packages_distributions()
    own = {"mogd"}  # this repository's distribution, installed from this checkout
    clashes = {}
    for sub in SEARCHED:
        for name in importable_names(ROOT / sub) - own:
            if name in installed:
                clashes[f"{sub or '.'}/{name}"] = installed[name]
    for sub, allowed in SCRIPT_FOLDERS.items():
        for name in importable_names(ROOT / sub) - allowed:
            if name in installed:
                clashes[f"{sub}/{name}"] = installed[name]
    assert not clashes, f"checkout names that hide installed distributions: {clashes}"


def test_kernels_live_inside_mogd():
    assert not (ROOT / "kernels").exists(), "a top-level kernels/ hides Hugging Face's `kernels`"
    import mogd.kernels

    assert Path(mogd.kernels.__file__).resolve().parent == ROOT / "mogd" / "kernels"


def run_with_root_first(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a notebook in the checkout would: the root first on sys.path, offline."""
    script = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.skipif(
    not importlib.util.find_spec("transformers"), reason="needs transformers (mogd[rlhf])"
)
def test_root_first_keeps_hub_kernels_and_loads_models(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's `kernels` is not installed (transformers < 5.25)")
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    done = run_with_root_first(
        f"""
        import json
        import kernels, transformers.integrations.hub_kernels
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "tiny")!r})
        print(json.dumps({{"kernels": kernels.__file__, "params": model.num_parameters()}}))
        """,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    installed = importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py")
    assert Path(report["kernels"]).resolve() == Path(str(installed)).resolve()
    assert report["params"] == LlamaForCausalLM(config).num_parameters()


@pytest.mark.skipif(
    not importlib.util.find_spec("transformers"), reason="needs transformers (mogd[rlhf])"
)
def test_scorer_script_runs_offline_from_the_root(tmp_path):
    # the README's `python integrations/evaluate.py score ...` from the checkout root, with the Hub
    # switched off: the scorers' encoder loads from the wheel that ships it, and no Hub kernel is
    # asked for
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "how do i bake bread", "response": "knead it"}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = [sys.executable, "integrations/evaluate.py", "score", "--preset", "tiny"]
    argv += ["--in", str(rows), "--out", str(tmp_path / "scored.jsonl")]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert set(row["rewards"]) == {"helpful", "harmless"} and "cost" in row


@pytest.mark.skipif(
    not importlib.util.find_spec("transformers"), reason="needs transformers (mogd[rlhf])"
)
def test_pipeline_models_keep_their_torch_layers(tmp_path):
    # transformers >= 5.25 kernelizes every from_pretrained by default; the pipeline opts out
    from integrations.testing import policy_tokenizer, pseudo_words, save_policy
    from integrations.worlds.paper.models import load_policy, load_reference

    save_policy(tmp_path / "policy", policy_tokenizer(pseudo_words(32)), seed=0)
    policy, _, _ = load_policy(tmp_path / "policy", dtype=torch.float32)
    reference = load_reference(tmp_path / "policy", dtype=torch.float32)
    assert not policy.use_kernels and not reference.use_kernels
