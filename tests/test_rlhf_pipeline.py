"""The RLHF pipeline end to end on the tiny preset: every method, resume, checkpoints, bad configs.

The tiny setup (tokenizer, SFT-warmed policy, scorers) is built once into a module-scoped cache;
every run trains for a couple of PPO iterations on a few prompts with short responses.
"""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from integrations import rlhf_mistral as rl
from integrations.run import presets
from integrations.run.config import (
    ADDED_LATER,
    SECTIONS,
    Config,
    config_hash,
    options,
    total_steps,
)
from integrations.run.parse import make_config
from integrations.run.runio import has_checkpoint, open_run, read_checkpoint, read_metrics
from integrations.run.validate import validate

TINY_RUN = [
    "--steps", "2", "--batch-size", "4", "--grad-accum", "1", "--minibatch-size", "4",
    "--max-new-tokens", "8", "--eval-size", "4", "--eval-samples", "2", "--signal-every", "1",
    "--save-every", "1", "--no-progress", "--no-plots", "--critic-warmup", "0",
]  # fmt: skip


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--method", "gapo", "--p", "-1"], "--p"),
        (["--method", "pgapo", "--preference", "0.5"], "--preference"),
        (["--method", "pgapo", "--preference", "0.5", "-0.5"], "--preference"),
        (["--method", "morlhf", "--preference", "1", "0"], "--preference"),
        (["--method", "gapo", "--preference", "0.3", "0.7"], "--preference"),
        (["--objectives"], "--objectives"),
        (["--objectives", "helpful", "truthful"], "--objectives"),
        (["--method", "ppo-s", "--objectives", "helpful"], "--objectives"),
        (["--method", "safe-rlhf", "--objectives", "harmless"], "--objectives"),
        (["--steps", "-1"], "--steps"),
        (["--steps", "3", "--epochs", "1"], "--epochs"),
        (["--grad-accum", "0"], "--grad-accum"),
        (["--top-p", "1.5"], "--top-p"),
        (["--lora-r", "8"], "--lora-r"),
        (["--sync-every", "0"], "--sync-every"),
        (["--generation-batch", "0"], "--generation-batch"),
    ],
)
def test_bad_config_fails_before_loading(argv, option, monkeypatch, capsys):
    def no_load(cfg):
        raise AssertionError("a model was loaded for a bad configuration")

    monkeypatch.setattr(presets, "build_setup", no_load)
    assert rl.main(argv) == 2
    assert option in capsys.readouterr().err


def test_unknown_method_names_the_option(monkeypatch, capsys):
    monkeypatch.setattr(presets, "build_setup", lambda cfg: pytest.fail("model loaded"))
    with pytest.raises(SystemExit) as exc:
        rl.main(["--method", "dpo"])
    assert exc.value.code == 2
    assert "--method" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--method"):
        validate(Config.from_flat({"method": "dpo"}))


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        rl.main(["--help"])
    out = capsys.readouterr().out
    text = " ".join(out.split())
    for name in Config().flat():
        assert "--" + name.replace("_", "-") in text
    assert "(default: 0.05)" in text and "(default: 0.1)" in text  # β and ε of Table 2
    # grouped by section: each section's title heads its options
    for section in dataclasses.fields(Config):
        assert f"\n{section.metadata['title']}:\n" in out, section.name
    ppo = out.split("\nPPO:\n")[1].split("\n\n")[0]
    assert "--beta" in ppo and "--clip-eps" in ppo and "--lr" not in ppo


def test_presets_are_tables_of_defaults():
    assert make_config("tiny").algorithm.critic_init == "copy"  # one option, a default per preset
    # Safe RLHF: from R, C (at the 8 GPUs of Table 2, where it fits)
    assert make_config("mistral-7b", world_size=8).algorithm.critic_init == "score"
    assert (
        make_config("mistral-7b", world_size=8, lr=0.5).optim.lr == 0.5
    )  # what the user gives wins
    assert make_config("mistral-7b", world_size=8).batch.steps is None  # derived from --epochs
    assert (
        make_config("mistral-7b", world_size=8, steps=10).batch.epochs is None
    )  # --steps replaces --epochs
    assert make_config("mistral-7b", lora_r=4).algorithm.probe == "full"  # LoRA: head frozen


def test_epochs_set_the_number_of_iterations():
    cfg = make_config(epochs=2.0, batch_size=4, grad_accum=2, advantage="gae", samples_per_prompt=1)
    assert cfg.batch.steps is None
    # 2 passes over 100 prompts at 4 x 2 prompts per process per iteration, 3 processes
    assert total_steps(cfg.batch, n_prompts=100, world=3) == math.ceil(200 / 24) == 9
    # 4 samples of each prompt (the tiny preset's groups): 4 x 2 / 4 distinct prompts
    grouped = make_config(epochs=2.0, batch_size=4, grad_accum=2)
    assert grouped.batch.samples_per_prompt == 4
    assert total_steps(grouped.batch, n_prompts=100, world=3) == math.ceil(200 / 6) == 34
    assert total_steps(make_config(steps=7).batch, n_prompts=100, world=3) == 7


def test_mistral_dry_run_json_shows_table_2(monkeypatch, capsys):
    monkeypatch.setattr(presets, "build_setup", lambda cfg: pytest.fail("model loaded"))
    assert rl.main(["--preset", "mistral-7b", "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"config", "plan"}
    cfg = report["config"]
    assert list(cfg) == list(Config().flat())  # flat: one key per option
    table_2 = {
        "lr": 1e-6,
        "critic_lr": 5e-7,
        "temperature": 0.7,
        "repetition_penalty": 1.05,
        "max_new_tokens": 512,
        "batch_size": 16,
        "grad_accum": 8,
        "epochs": 2,
        "lambda_lr": 0.01,
        "lambda_max": 10,
        "beta": 0.05,
        "clip_eps": 0.1,
    }
    assert {k: cfg[k] for k in table_2} == table_2
    plan = report["plan"]
    # Mistral-7B: 32000·4096·2 + 32·(2·4096² + 2·4096·1024 + 3·4096·14336 + 2·4096) + 4096
    assert plan["policy"]["parameters"] == 7_241_732_096
    assert plan["mogd"]["k"] == 2
    assert rl.main(["--dry-run", "--json"]) == 0  # the tiny preset: counts of its model
    tiny = json.loads(capsys.readouterr().out)["plan"]
    assert tiny["policy"]["parameters"] == tiny["policy"]["trainable"] > 0


# A run directory as the pipeline wrote it before the options had sections (commit d3ce99b: a
# safe-rlhf run killed after its first checkpoint), without the checkpoint's tensors: its flat
# config.json and the checkpoint's meta.json, which holds the config hash --resume checks.
RUN_BEFORE_SECTIONS = Path(__file__).parent / "data" / "run_before_sections"


def test_config_json_is_flat_and_names_each_options_section():
    cfg = make_config("tiny", lr=0.5)
    flat = cfg.flat()
    assert flat["lr"] == 0.5 and flat["beta"] == 0.05 and flat["preset"] == "tiny"
    assert Config.from_flat(flat) == cfg  # the JSON form round-trips
    assert set(flat) == set(SECTIONS) and len(SECTIONS) == len(list(options()))  # unique names
    for name, section in SECTIONS.items():  # each key belongs to exactly one section
        assert name in {f.name for f in dataclasses.fields(getattr(cfg, section))}
    assert cfg.replace(seed=3).run.seed == 3 and cfg.run.seed == 0
    with pytest.raises(TypeError, match="no option 'learning_rate'"):
        Config.from_flat({"learning_rate": 1.0})


def test_run_directories_from_before_sections_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(presets, "build_setup", lambda cfg: pytest.fail("model loaded"))
    run = tmp_path / "old-run"
    shutil.copytree(RUN_BEFORE_SECTIONS, run)
    saved = json.loads((run / "config.json").read_text())
    cfg = rl.parse_config(["--resume", str(run), "--no-progress"])
    # options added since read back at their defaults: what the old run did
    assert cfg.flat() == {
        **saved,
        **ADDED_LATER,
        "out": str(run),
        "resume": str(run),
        "progress": False,
    }
    assert ADDED_LATER == {
        "samples_per_prompt": 1,
        "advantage": "gae",
        "critic_warmup": 0,
        "prompt_len": 128,
        "sync_every": 1,
        "generation_batch": None,
    }
    assert cfg.algorithm.method == "safe-rlhf" and cfg.safe_rlhf.lambda_threshold == -0.8
    assert cfg.batch.steps == 2 and cfg.rollout.max_new_tokens == 4
    # the checkpoint's config hash, written by the old code, is the hash of the sectioned Config:
    # --resume accepts the checkpoint (whose tensors then load as before: same DCP layout)
    state = open_run(cfg)
    assert state is not None and state["step"] == 1
    assert state["config_hash"] == config_hash(cfg) == "fbe2130d9c17bfa2"
    # and it still refuses an option that would change the run
    assert rl.main(["--resume", str(run), "--beta", "0.2"]) == 2
    assert "--beta" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end

SFT_STEPS = 40  # a short SFT: the tests check the pipeline, not the policy's prose


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from integrations.worlds.tiny.setup import build_tiny_setup

    cache = tmp_path_factory.mktemp("tiny-cache")
    build_tiny_setup(cache, seed=0, sft_steps=SFT_STEPS)  # built once, loaded by every run
    return cache


@pytest.fixture
def tiny(tiny_cache, monkeypatch):
    from integrations.worlds.tiny.setup import build_tiny_setup

    def build(cfg):
        return build_tiny_setup(tiny_cache, seed=cfg.tiny.sft_seed, sft_steps=SFT_STEPS)

    monkeypatch.setattr(presets, "build_setup", build)
    return build


def run(out, *argv):
    cfg = rl.parse_config([*TINY_RUN, "--out", str(out), *argv])
    rl.train(cfg)
    return out, read_metrics(out / "metrics.jsonl")


def finite(x):
    return isinstance(x, float) and math.isfinite(x)


MULTI = {
    "gapo-p1": ["--method", "gapo", "--p", "1"],
    "gapo-p2-raw": ["--method", "gapo", "--p", "2", "--update", "raw"],
    "mgda": ["--method", "mgda"],
    "pgapo": ["--method", "pgapo", "--preference", "0.3", "0.7"],
}
SINGLE = {
    "gapo-k1": ["--method", "gapo", "--objectives", "helpful"],  # one objective: weight 1
    "morlhf": ["--method", "morlhf", "--preference", "0.3", "0.7"],
    "ppo-h": ["--method", "ppo-h"],
    "ppo-s": ["--method", "ppo-s"],
    "safe-rlhf": ["--method", "safe-rlhf", "--lambda-lr", "0.5"],
    "fast-rl": ["--method", "fast-rl", "--weight-lr", "0.5"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [*MULTI, *SINGLE])
def test_every_method_trains(name, tiny, tmp_path):
    argv = {**MULTI, **SINGLE}[name]
    sft = tiny(Config()).policy.state_dict()
    out, rows = run(tmp_path / name, *argv)
    assert [r["step"] for r in rows] == [1, 2]
    scored = ["helpful"] if name == "gapo-k1" else ["helpful", "harmless"]
    for r in rows:
        keys = ["helpful/reward_mean", "helpful/reward_std", "kl", "entropy", "response_length"]
        if "harmless" in scored:
            keys += ["harmless/reward_mean", "harmless/cost_mean", "harmless/harmless_ratio"]
            assert r["harmless/reward_mean"] == pytest.approx(-r["harmless/cost_mean"])
            assert 0.0 <= r["harmless/harmless_ratio"] <= 1.0
        for key in [*keys, "lr"]:
            assert finite(r[key]), (key, r)
        assert 1 <= r["response_length"] <= 8
    state = read_checkpoint(out)
    assert state["step"] == 2
    moved = [n for n, v in state["policy"].items() if not torch.equal(v, sft[n])]
    assert moved, "the policy did not change"
    result = json.loads((out / "eval.json").read_text())
    assert list(result["objectives"]) == scored and result["prompts"] == 4
    if "harmless" in scored:
        assert 0.0 <= result["harmless_ratio"] <= 1.0

    if name in MULTI:  # two policy losses through MOGD: weights, norms, cosine logged
        for r in rows:
            assert -1.0 <= r["cosine"] <= 1.0
            w = [r["weight/helpful"], r["weight/harmless"]]
            n = [r["norm/helpful"], r["norm/harmless"]]
            assert all(x > 0 for x in n)
            if name == "pgapo":  # Eq. 8: w_i = λ_i / ‖g_i‖
                assert w[0] * n[0] == pytest.approx(0.3) and w[1] * n[1] == pytest.approx(0.7)
            if name == "gapo-p1":  # k = 2, p = 1: α = (½, ½) on the unit gradients
                assert r["alpha/helpful"] == pytest.approx(0.5)
                assert w[0] * n[0] == pytest.approx(0.5)
            if name == "mgda":
                assert w[0] + w[1] == pytest.approx(1.0)
    else:
        assert "cosine" not in rows[0] or rows[0]["cosine"] is None
        loss_name = next(k for k in rows[0] if k.startswith("weight/"))
        assert all(r[loss_name] == 1.0 for r in rows)  # k = 1: MOGD is the inner optimizer
    if name == "safe-rlhf":  # log λ ← log λ + lr·λ·(C̄ − d), λ_0 = 1, before the update
        d = make_config("tiny").safe_rlhf.lambda_threshold  # the tiny preset's binding threshold
        expected = math.exp(0.5 * 1.0 * (rows[0]["harmless/cost_mean"] - d))
        assert rows[0]["lambda/harmless"] == pytest.approx(min(expected, 5.0), rel=1e-5)
    if name == "fast-rl":  # w ∝ w·exp(−η r̄) from ½, ½, before each update (Li et al. 2024)
        r0 = [rows[0]["helpful/reward_mean"], rows[0]["harmless/reward_mean"]]
        z = [math.exp(-0.5 * v) for v in r0]
        assert rows[0]["reward_weight/helpful"] == pytest.approx(z[0] / sum(z), rel=1e-5)
        assert rows[1]["reward_weight/helpful"] != rows[0]["reward_weight/helpful"]
    for r in rows:  # --signal-every 1: each loss's half-batch gradient cosine
        signal = [v for k, v in r.items() if k.startswith("signal/")]
        assert signal and all(-1.0 <= v <= 1.0 for v in signal)


@pytest.mark.slow
def test_entropy_bonus_is_the_updates_regularizer(tiny, tmp_path):
    # the bonus goes to MOGD's regularizer: its gradient is logged beside the objectives' and
    # never weighed (GAPO p = 1 with two objectives keeps α = (½, ½)); off, there is none
    _, rows = run(tmp_path / "bonus", "--method", "gapo", "--entropy-coef", "0.01", "--steps", "1")
    (row,) = rows
    assert row["regularizer_norm"] > 0
    assert all(-1.0 <= row[f"regularizer_cosine/{n}"] <= 1.0 for n in ("helpful", "harmless"))
    assert row["alpha/helpful"] == pytest.approx(0.5)
    _, rows = run(tmp_path / "plain", "--method", "gapo", "--steps", "1")
    assert "regularizer_norm" not in rows[0] or rows[0]["regularizer_norm"] is None


@pytest.mark.slow
def test_run_leaves_a_loadable_policy(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = run(tmp_path / "one", "--method", "gapo", "--steps", "1", "--eval-size", "0")
    trained = read_checkpoint(out)["policy"]
    model = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights' dtype
    for name, p in model.named_parameters():
        assert torch.equal(p, trained[name]), name
    tokenizer = AutoTokenizer.from_pretrained(out / "policy")
    assert tokenizer.decode(tokenizer("how do i bake bread")["input_ids"]).endswith("bread")

    zero = tmp_path / "zero"  # --steps 0: the starting (SFT) policy, no iteration
    rl.train(rl.parse_config([*TINY_RUN, "--out", str(zero), "--steps", "0", "--eval-size", "0"]))
    sft = tiny(Config()).policy.state_dict()
    start = AutoModelForCausalLM.from_pretrained(zero / "policy").state_dict()
    assert start.keys() == sft.keys() and all(torch.equal(start[k], sft[k]) for k in sft)
    assert not has_checkpoint(zero)


@pytest.mark.slow
def test_grad_accum_sets_the_batch_of_each_update(tiny, tmp_path):
    argv = ["--steps", "1", "--batch-size", "2", "--minibatch-size", "2", "--eval-size", "0"]
    accum, _ = run(tmp_path / "accum", *argv, "--grad-accum", "2")
    plain, _ = run(tmp_path / "plain", *argv, "--batch-size", "4")
    # both sample 4 prompts; with --grad-accum 2 one update sees all 4, without it two see 2
    assert read_checkpoint(accum)["scheduler"]["last_epoch"] == 1
    assert read_checkpoint(plain)["scheduler"]["last_epoch"] == 2


@pytest.mark.slow
def test_probe_mode_and_plots(tiny, tmp_path):
    out, rows = run(tmp_path / "probe", "--method", "gapo", "--probe", "lm_head", "--plots")
    assert all(finite(r["weight/helpful"]) for r in rows)
    assert (out / "plots.png").stat().st_size > 0
    with pytest.raises(ValueError, match="--probe"):
        run(tmp_path / "bad-probe", "--probe", "no_such_module")


def _interrupt_after(monkeypatch, n_rollouts):
    real = rl.generate
    calls = {"n": 0}

    def generate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_rollouts:
            raise KeyboardInterrupt  # the process dies mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(rl, "generate", generate)
    return real


@pytest.mark.slow
def test_resume_continues_exactly(tiny, tmp_path, monkeypatch):
    argv = ["--method", "gapo", "--steps", "3", "--save-every", "2", "--eval-size", "0"]
    full, full_rows = run(tmp_path / "full", *argv)

    real = _interrupt_after(monkeypatch, 2)  # checkpoint at 2, killed in iteration 3
    with pytest.raises(KeyboardInterrupt):
        rl.train(rl.parse_config([*TINY_RUN, "--out", str(tmp_path / "cut"), *argv]))
    monkeypatch.setattr(rl, "generate", real)
    assert read_checkpoint(tmp_path / "cut")["step"] == 2
    rl.train(rl.parse_config(["--resume", str(tmp_path / "cut")]))

    a, b = read_checkpoint(full), read_checkpoint(tmp_path / "cut")
    assert a["step"] == b["step"] == 3
    for name in a["policy"]:
        assert torch.equal(a["policy"][name], b["policy"][name]), name
    for name in a["critic"]:
        assert torch.equal(a["critic"][name], b["critic"][name]), name
    cut_rows = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in cut_rows] == [1, 2, 3]
    for x, y in zip(full_rows, cut_rows, strict=True):
        assert x["helpful/reward_mean"] == y["helpful/reward_mean"]
        assert x["weight/harmless"] == y["weight/harmless"]


@pytest.mark.slow
def test_bad_checkpoints_fail_clearly_and_touch_nothing(tiny, tmp_path, capsys):
    out, _ = run(tmp_path / "run", "--method", "mgda", "--steps", "1", "--eval-size", "0")

    assert rl.main(["--resume", str(out), "--lr", "1.0"]) == 2  # a changed option
    assert "--lr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="already holds a run"):
        run(out, "--method", "mgda", "--steps", "1")  # same --out without --resume

    bad = tmp_path / "corrupt"
    shutil.copytree(out, bad)
    meta = next((bad / "checkpoints").iterdir()) / "meta.json"
    blob = meta.read_bytes()[:20]
    meta.write_bytes(blob)
    assert rl.main(["--resume", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert meta.read_bytes() == blob

    other = tmp_path / "mismatch"
    shutil.copytree(out, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["beta"] = 0.2
    (other / "config.json").write_text(json.dumps(cfg))
    before = sorted((other / "checkpoints").rglob("*"))
    assert rl.main(["--resume", str(other)]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert sorted((other / "checkpoints").rglob("*")) == before


@pytest.mark.slow
@pytest.mark.timeout(1800)  # eight short runs and two soups: minutes on a busy 2-core machine
def test_evaluate_sweep_and_compare(tiny, tmp_path, monkeypatch):
    from integrations import evaluate as ev

    monkeypatch.setattr(ev, "SWEEP_LAMBDAS", (0.2,))
    monkeypatch.setattr(ev, "COMPARE_METHODS", ev.COMPARE_METHODS[:1] + ev.COMPARE_METHODS[-2:-1])
    base = [a for a in TINY_RUN if a != "--no-plots"] + ["--steps", "1"]

    assert ev.main(["sweep", "--out", str(tmp_path / "sweep"), *base]) == 0
    summary = json.loads((tmp_path / "sweep" / "sweep-seed0.json").read_text())  # one per seed
    # every family on the same grid, measured from one reference point
    assert [(p["family"], p["lambda"]) for p in summary["points"]] == [
        ("pgapo", 0.2), ("morlhf", 0.2), ("rs", 0.2)
    ]  # fmt: skip
    for family in ("pgapo", "morlhf", "rs"):
        assert summary["families"][family]["hypervolume"] > 0  # the reference is below every point
    for p in summary["points"]:
        assert all(
            p[n] > r for n, r in zip(summary["objectives"], summary["reference"], strict=True)
        )
    assert (tmp_path / "sweep" / "front-seed0.png").stat().st_size > 0
    assert (tmp_path / "sweep" / "ppo-h-seed0" / "eval.json").is_file()  # RS's experts

    assert ev.main(["compare", "--out", str(tmp_path / "cmp"), "--seeds", "0", "1", *base]) == 0
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["objectives"] == ["helpful", "harmless"]
    assert [(r["method"], r["seed"]) for r in report["rows"]] == [
        ("sft", 0), ("sft", 1), ("gapo-p1", 0), ("gapo-p1", 1)
    ]  # fmt: skip
    for r in report["rows"]:
        assert set(r) == {"method", "seed", "scores", "se", "per_prompt", "harmless_ratio"}
        assert set(r["scores"]) == {"helpful", "harmless"} and 0 <= r["harmless_ratio"] <= 1
        assert set(r["se"]) == {"helpful", "harmless"} and all(v >= 0 for v in r["se"].values())
        assert [len(v) for v in r["per_prompt"].values()] == [4, 4]  # --eval-size 4
    assert set(report["groups"]) == {"benign"}  # --eval-size 4: the first held-out prompts
    assert all(r["paired"] for r in report["significance"])  # same prompts: paired by prompt
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| sft |" in table and "| gapo-p1 |" in table and "HV contribution" in table
    assert "benign prompts" in table
    assert (tmp_path / "cmp" / "compare.csv").read_text().startswith("method,seeds,helpful")

    # rerunning reuses finished runs, but never the runs of another configuration
    assert ev.main(["compare", "--out", str(tmp_path / "cmp"), "--seeds", "0", *base]) == 0
    assert (
        ev.main(["compare", "--out", str(tmp_path / "cmp"), "--seeds", "0", *base, "--lr", "1"])
        == 2
    )

    # evaluating a finished run again reproduces the end-of-training evaluation exactly
    run_dir = tmp_path / "cmp" / "gapo-p1-seed1"
    assert ev.evaluate_run(run_dir) == json.loads((run_dir / "eval.json").read_text())


@pytest.mark.slow
def test_critic_warmup_predicts_the_score_at_the_first_iteration(tiny, tmp_path):
    """--critic-warmup: the critic regresses on SFT rollouts before PPO (cached), so its
    explained variance is clearly > 0 at iteration 1, where a V = 0 critic has exactly 0.
    (Checked on the helpfulness stream: this 40-step SFT's answers are all about equally
    harmless, so the harmlessness returns barely vary and their EV says little.)"""
    argv = ["--advantage", "gae", "--samples-per-prompt", "1", "--batch-size", "16",
            "--minibatch-size", "16", "--critic-lr", "3e-3", "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    _, rows = run(tmp_path / "warm", *argv, "--critic-warmup", "256")
    assert list((tmp_path / "c").glob("critic-*.pt"))  # the fit is cached
    assert rows[0]["critic/helpful/explained_variance"] > 0.1
    _, cold = run(tmp_path / "cold", *argv, "--critic-warmup", "0")
    for name in ("helpful", "harmless"):
        assert cold[0][f"critic/{name}/explained_variance"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_group_estimator_trains_without_a_critic(tiny, tmp_path):
    _, rows = run(tmp_path / "group", "--advantage", "group", "--samples-per-prompt", "2")
    assert [r["step"] for r in rows] == [1, 2]
    assert not any(k.startswith("critic/") or k.startswith("value_loss/") for k in rows[0])
    for r in rows:  # NaN where a half's scores are all equal within their groups (no gradient)
        helpful = r["signal/helpful"]
        assert helpful != helpful or -1.0 <= helpful <= 1.0
        assert r["helpful/reward_std"] > 0
