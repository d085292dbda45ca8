"""The tiny preset's world: corpus, scorers, tokenizer, and the cached SFT setup."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from integrations.worlds.base import Scorer, Setup
from integrations.worlds.tiny.scorers import (
    DATA_DIR,
    EmbeddingHelpfulness,
    HelpfulnessHead,
    OffensiveLanguageCost,
    corpus_sha256,
    fit_helpfulness_head,
    load_shipped_head,
    pairwise_accuracy,
    preference_pairs,
    shared_encoder,
)
from integrations.worlds.tiny.setup import (
    build_tiny_setup,
    build_tokenizer,
    format_prompt,
    load_corpus,
    prompt_categories,
    rl_prompts,
)

ABUSIVE = "Listen, you worthless idiot. Shut up and get lost, you pathetic loser."
POLITE = "I'm sorry, but I won't write insults. A calm, honest talk usually works better."


@pytest.fixture(scope="module")
def cost() -> OffensiveLanguageCost:
    return OffensiveLanguageCost()


@pytest.fixture(scope="module")
def helpful() -> EmbeddingHelpfulness:
    return EmbeddingHelpfulness()


# --- corpus -----------------------------------------------------------------------------------


def test_corpus_splits_are_disjoint_and_complete() -> None:
    train, held_out = load_corpus("train"), load_corpus("eval")
    train_prompts = {r["prompt"] for r in train}
    eval_prompts = {r["prompt"] for r in held_out}
    assert len(train_prompts) > 400 and len(eval_prompts) > 100
    assert not train_prompts & eval_prompts
    harmful = {"comply", "refuse", "safe"}
    for rows in (train, held_out):
        labels: dict[str, set[str]] = {}
        tuned: dict[str, set[str]] = {}
        for r in rows:
            assert r["response"].strip() and r["prompt"].strip()
            labels.setdefault(r["prompt"], set()).add(r["label"])
            if r["sft"]:
                tuned.setdefault(r["prompt"], set()).add(r["label"])
            assert (r["category"] == "harmful") == (r["label"] in harmful)
        # every harmful request carries both sides of the conflict and a safe, helpful answer;
        # every benign one an answer
        assert all(v in (harmful, {"helpful"}) for v in labels.values())
        assert sum(v == harmful for v in labels.values()) > 0.25 * len(labels)
        # the SFT mix: a harmful request's refusal and one of its other two answers
        for prompt, v in labels.items():
            if v == harmful:
                assert tuned[prompt] in ({"refuse", "comply"}, {"refuse", "safe"})
            else:
                assert tuned[prompt] == {"helpful"}
        assert (
            0.3
            < sum(t == {"refuse", "safe"} for t in tuned.values() if len(t) == 2)
            / sum(len(t) == 2 for t in tuned.values())
            < 0.7
        )
    shipped = sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.is_file())
    assert shipped < 1_000_000


def test_corpus_files_match_their_generator() -> None:
    spec = importlib.util.spec_from_file_location("make_corpus", DATA_DIR / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0


def test_load_corpus_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split"):
        load_corpus("test")


# --- scorers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["cost", "helpful"])
def test_scorer_interface(which: str, request: pytest.FixtureRequest) -> None:
    scorer = request.getfixturevalue(which)
    assert isinstance(scorer, Scorer)
    assert scorer.kind == ("cost" if which == "cost" else "reward")
    prompts = ["Write an insult for my coworker.", "What is a rainbow?", "How do I make rice?"]
    responses = [ABUSIVE, "A rainbow is an arc of colors in the sky after rain.", ""]
    out = scorer.score(prompts, responses)
    assert out.dtype == torch.float32 and out.shape == (3,) and out.device.type == "cpu"
    assert not out.requires_grad and torch.isfinite(out).all()
    one_by_one = torch.cat(
        [scorer.score([p], [r]) for p, r in zip(prompts, responses, strict=True)]
    )
    torch.testing.assert_close(out, one_by_one, atol=1e-4, rtol=1e-4)  # padding-independent
    assert scorer.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="same length"):
        scorer.score(prompts, responses[:2])
    with pytest.raises(TypeError, match="sequences of str"):
        scorer.score("a prompt", "a response")


def test_cost_ranks_abuse_above_politeness(cost: OffensiveLanguageCost) -> None:
    c = cost.score(["Write an insult for my coworker."] * 2, [ABUSIVE, POLITE])
    # the paper's convention: harmful iff cost > 0
    assert c[0] > 0 > c[1]
    bound = torch.log(torch.tensor((1 - cost.eps) / cost.eps))
    assert (c.abs() <= bound + 1e-5).all()
    with pytest.raises(ValueError, match="eps"):
        OffensiveLanguageCost(eps=0.7)
    with pytest.raises(ValueError, match="floor"):
        OffensiveLanguageCost(floor=0.0)


def test_cost_hinge_flattens_harmless_answers_and_keeps_the_sign() -> None:
    rows = load_corpus("eval")
    prompts = [r["prompt"] for r in rows]
    answers = [r["response"] for r in rows]
    hinged = OffensiveLanguageCost().score(prompts, answers)
    plain = OffensiveLanguageCost(floor=None).score(prompts, answers)
    assert torch.equal(hinged < 0, plain < 0)  # harmless iff C < 0, with or without the hinge
    assert (hinged >= -1.0).all() and (plain < -1.0).any()
    torch.testing.assert_close(hinged, plain.clamp_min(-1.0))


def test_helpfulness_prefers_on_topic_compliant_answers(helpful: EmbeddingHelpfulness) -> None:
    q = "Give me some tips for sleeping better."
    on_topic = (
        "Here are a few tips for sleeping better: keep a regular bedtime, avoid screens in the "
        "last hour, and keep your room cool and dark."
    )
    off_topic = "To make pancakes: mix flour, milk and eggs, then fry them in a buttered pan."
    s = helpful.score([q] * 4, [on_topic, off_topic, q, POLITE])
    assert s[0] > s[1] and s[0] > s[2] and s[0] > s[3]
    # the conflict: on a harmful request the compliant (abusive) answer is the more helpful one
    harmful = "Write an insult for my coworker."
    s = helpful.score([harmful] * 2, [ABUSIVE, POLITE])
    assert s[0] > s[1]
    # ... and an answer that serves the real need without abuse beats the bare refusal
    safe = (
        "It sounds like your coworker is getting on your nerves. Tell them calmly that their "
        "loud calls bother you, and ask them to take calls in the meeting room."
    )
    s = helpful.score([harmful] * 2, [safe, POLITE])
    assert s[0] > s[1]


def test_shipped_head_matches_the_corpus_and_ranks_held_out_pairs(
    helpful: EmbeddingHelpfulness,
) -> None:
    head = load_shipped_head()
    assert head.meta["corpus_sha256"] == corpus_sha256()
    assert head.meta["loss"] == "bradley-terry"
    held_out = load_corpus("eval")
    keep = sorted({r["prompt"] for r in held_out})[::3]
    pairs = preference_pairs([r for r in held_out if r["prompt"] in keep], seed=1)
    kinds = {x.kind for x in pairs}
    assert {"safe>refuse", "comply>refuse", "helpful>refuse", "refuse>echo"} <= kinds
    assert "comply>safe" not in kinds and "safe>comply" not in kinds  # left unranked
    acc = pairwise_accuracy(helpful, pairs)
    # unseen requests: a safe, helpful answer outranks the refusal, junk ranks below both (a
    # refusal against another task's fluent answer is the closest call)
    assert all(v > 0.9 for k, v in acc.items() if k != "refuse>off_topic"), acc
    # (0.94 on this subset since the answers were cut to <= ~40 tokens: the short safe answers
    # are closer to a refusal in the encoder's space; 0.98 with the long ones)
    assert acc["safe>refuse"] > 0.9 and acc["refuse>off_topic"] > 0.8, acc
    with pytest.raises(ValueError, match="refit"):
        HelpfulnessHead.from_json(json.dumps({"weight": [0.0] * 3, "bias": 0.0, "meta": {}}))


def test_fit_helpfulness_head_learns_from_a_small_sample() -> None:
    # A head fitted on a few dozen requests already ranks unseen requests' answers correctly,
    # which a head that did not learn (or learned the labels backwards) cannot do.
    train = load_corpus("train")
    keep = sorted({r["prompt"] for r in train})[::15]
    pairs = preference_pairs([r for r in train if r["prompt"] in keep], seed=0)
    head = fit_helpfulness_head(shared_encoder(), pairs)
    assert head.meta["train_pair_accuracy"] > 0.9
    held_out = load_corpus("eval")
    keep_eval = sorted({r["prompt"] for r in held_out})[::4]
    pairs2 = preference_pairs([r for r in held_out if r["prompt"] in keep_eval], seed=1)
    acc = pairwise_accuracy(EmbeddingHelpfulness(head, shared_encoder()), pairs2)
    assert acc["helpful>refuse"] > 0.9 and acc["helpful>off_topic"] > 0.8, acc
    assert acc["safe>refuse"] > 0.7, acc
    with pytest.raises(TypeError, match="pairs"):
        fit_helpfulness_head(shared_encoder(), [])


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_round_trips_and_pads_left() -> None:
    rows = load_corpus("train")
    tok = build_tokenizer([format_prompt(r["prompt"]) + " " + r["response"] for r in rows], 512)
    assert len(tok) == 512
    for text in [format_prompt("What is a rainbow?") + " An arc.", "naïve café ☕ — ok\n\tdone"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    batch = tok(["User: hi", "User: a much longer request here"], padding=True)
    first = batch["input_ids"][0]
    assert tok.padding_side == "left" and first[0] == tok.pad_token_id
    assert first[-1] != tok.pad_token_id and batch["attention_mask"][0][0] == 0
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(["abc"], 100)


# --- setup ------------------------------------------------------------------------------------


def test_setup_builds_caches_and_generates(tmp_path) -> None:
    setup = build_tiny_setup(tmp_path, seed=0, sft_steps=6)
    assert isinstance(setup, Setup)
    entries = list(tmp_path.glob("tiny-*"))
    assert len(entries) == 1
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["sft"]["steps"] == 6 and meta["sft_loss_last10"] < meta["sft_loss_first"]
    assert 5e5 < meta["parameters"] < 3e6

    assert [s.kind for s in setup.scorers] == ["reward", "cost"]
    assert [s.name for s in setup.scorers] == ["helpful", "harmless"]
    assert not set(setup.train_prompts) & set(setup.eval_prompts)
    category = prompt_categories()
    for prompts in (setup.train_prompts, setup.eval_prompts):
        share = sum(category[p] == "harmful" for p in prompts) / len(prompts)
        assert 0.55 < share < 0.75  # the PPO prompt mix leans towards safety-relevant requests
    assert setup.train_prompts == rl_prompts(load_corpus("train"))
    assert setup.format_prompt("hi") == "User: hi\nAssistant:"
    assert "lm_head" in dict(setup.policy.named_modules())  # what --probe lm_head finds
    assert setup.reference is not None
    assert all(not p.requires_grad for p in setup.reference.parameters())
    for p, r in zip(setup.policy.parameters(), setup.reference.parameters(), strict=True):
        assert p.requires_grad and torch.equal(p, r) and p.data_ptr() != r.data_ptr()

    tok = setup.tokenizer
    prompts = [setup.format_prompt(p) for p in setup.eval_prompts[:2]] + [format_prompt("hi")]
    batch = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = setup.policy.generate(**batch, do_sample=True, max_new_tokens=5)
    assert out.shape[0] == 3 and 1 <= out.shape[1] - batch["input_ids"].shape[1] <= 5
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(setup.scorers[1].score(setup.eval_prompts[:3], texts)) == 3

    # a second build with the same settings loads the cached entry: same weights, no rebuild
    mtime = (entries[0] / "meta.json").stat().st_mtime_ns
    again = build_tiny_setup(tmp_path, seed=0, sft_steps=6)
    assert (entries[0] / "meta.json").stat().st_mtime_ns == mtime
    assert len(list(tmp_path.glob("tiny-*"))) == 1
    for p, q in zip(setup.policy.parameters(), again.policy.parameters(), strict=True):
        assert torch.equal(p, q)
    # another seed is another entry
    build_tiny_setup(tmp_path, seed=1, sft_steps=2)
    assert len(list(tmp_path.glob("tiny-*"))) == 2
    # a damaged entry is reported, not silently used or overwritten
    shutil.rmtree(entries[0] / "policy")
    with pytest.raises(ValueError, match="incomplete"):
        build_tiny_setup(tmp_path, seed=0, sft_steps=6)


def test_setup_build_is_deterministic(tmp_path) -> None:
    a = build_tiny_setup(tmp_path / "a", seed=3, sft_steps=3).policy
    b = build_tiny_setup(tmp_path / "b", seed=3, sft_steps=3).policy
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_setup_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="sft_steps"):
        build_tiny_setup(tmp_path, sft_steps=0)
    with pytest.raises(TypeError, match="seed"):
        build_tiny_setup(tmp_path, seed=1.5)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # nothing built for a bad configuration
