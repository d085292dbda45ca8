"""The embedded default preset (``--preset tiny``): a CPU-sized world for multi-objective RLHF.

Everything is built offline, from files shipped in ``integrations/worlds/tiny/data``:

- a byte-level BPE tokenizer trained in code on the corpus (so any text round-trips);
- a small ``transformers.MistralForCausalLM`` (same architecture as the paper's Mistral-7B:
  GQA attention, RMSNorm, SwiGLU, RoPE; 0.66M parameters) warmed up by a short supervised
  fine-tuning on the corpus's SFT mix, so that its answers read as text. On harmful requests
  that mix holds refusals, compliant (abusive) answers and safe, helpful answers, so the SFT
  policy does all three: PPO can move along the helpfulness/harmlessness conflict (comply vs
  refuse, paper §1, App. B) and improve both at once (towards the safe, helpful answers);
- the prompts PPO trains and is evaluated on: every harmful request and every third benign one
  (about two thirds safety-relevant, as PKU-SafeRLHF's prompts are; :func:`rl_prompts`);
- the two scorers of :mod:`.scorers` (helpfulness reward, harmlessness cost).

``build_tiny_setup`` caches the tokenizer and the SFT policy under ``cache_dir``, keyed by a hash
of everything that determines them (config, SFT settings, seed, corpus bytes), so later runs
load in about a second.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from ..base import LOCAL_MODEL_KWARGS, Setup
from .scorers import (
    DATA_DIR,
    EmbeddingHelpfulness,
    OffensiveLanguageCost,
    corpus_sha256,
    load_shipped_head,
)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
VOCAB_SIZE = 1024
MODEL_CONFIG: dict[str, object] = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    sliding_window=None,
    tie_word_embeddings=False,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
)
# 1000 steps (were 300, train loss 0.09): at 300 the policy's sampled safe answers to held-out
# harmful requests were garbled often enough to score R 1.78 against its refusals' 1.65, so the
# world's joint gain (refusal -> safe answer) was worth +0.12 R; at 1000 (train loss 0.019) they
# score 2.60 against 1.60 (README, "Why helpfulness did not rise").
SFT_CONFIG: dict[str, float | int] = dict(
    steps=1000, batch_size=32, lr=3e-3, warmup=20, min_lr_ratio=0.1, weight_decay=0.01, clip=1.0
)
# Bump when the build procedure changes in a way the hashed settings do not capture.
BUILD_VERSION = 3
# PPO prompts: every harmful request and every BENIGN_EVERY-th benign one.
BENIGN_EVERY = 3


def format_prompt(request: str) -> str:
    """The chat template of the tiny preset: ``"User: {request}\\nAssistant:"``.

    The answer follows after one space; generation stops at the EOS token.
    """
    return f"User: {request}\nAssistant:"


def load_corpus(split: str) -> list[dict[str, Any]]:
    """Rows of ``data/{split}.jsonl`` (``split`` is "train" or "eval")."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    path = DATA_DIR / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    for i, r in enumerate(rows):
        if not {"prompt", "response", "label", "category", "task", "sft"} <= r.keys():
            raise ValueError(
                f"{path}:{i + 1} lacks a prompt/response/label/category/task/sft field"
            )
    return rows


def unique_prompts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Distinct requests in first-seen order."""
    return list(dict.fromkeys(r["prompt"] for r in rows))


def rl_prompts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The requests PPO samples: every harmful one and every ``BENIGN_EVERY``-th benign one.

    Harmlessness is decided on harmful requests (a benign answer is harmless already), so the
    mix leans towards them as PKU-SafeRLHF's prompts do; first-seen order, deterministic.
    """
    category = prompt_categories(rows)
    benign = [p for p in unique_prompts(rows) if category[p] == "benign"]
    keep = set(benign[::BENIGN_EVERY])
    return [p for p in unique_prompts(rows) if category[p] == "harmful" or p in keep]


def prompt_categories(rows: Sequence[dict[str, Any]] | None = None) -> dict[str, str]:
    """``{request: "benign" | "harmful"}`` of corpus rows (default: both splits)."""
    if rows is None:
        rows = load_corpus("train") + load_corpus("eval")
    return {r["prompt"]: r["category"] for r in rows}


def build_tokenizer(texts: Sequence[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``; prepends BOS, pads on the left (for generation)."""
    if vocab_size < 256 + 3:
        raise ValueError(f"vocab_size must be >= 259 (bytes + 3 specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
    )


def _sft_batches(
    tokenizer: PreTrainedTokenizerFast, rows: Sequence[dict[str, Any]]
) -> list[tuple[list[int], int]]:
    """Token ids of ``BOS prompt answer EOS`` and where the answer starts, per row."""
    prompts = tokenizer([format_prompt(r["prompt"]) for r in rows])["input_ids"]
    answers = tokenizer([" " + r["response"] for r in rows], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + a + [eos], len(p)) for p, a in zip(prompts, answers, strict=True)]


def _lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def supervised_finetune(
    model: MistralForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[dict[str, Any]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    min_lr_ratio: float,
    weight_decay: float,
    clip: float,
    seed: int,
) -> list[float]:
    """Next-token cross-entropy on the answer tokens (+ EOS) only; AdamW, warm-up + cosine.

    Returns the loss of every step. Batches are drawn without replacement from a seeded
    permutation per epoch, so the run is a function of (model init, rows, settings, seed).
    """
    examples = _sft_batches(tokenizer, rows)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    pad = tokenizer.pad_token_id
    order: list[int] = []
    losses = []
    model.train()
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        width = max(len(examples[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad)
        labels = torch.full((len(idx), width), -100)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq, start = examples[i]
            ids[row, : len(seq)] = torch.tensor(seq)  # right padding: training only
            labels[row, start : len(seq)] = torch.tensor(seq[start:])
            mask[row, : len(seq)] = 1
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, warmup, min_lr_ratio)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.detach().item())
    model.eval()
    return losses


def _cache_key(seed: int, sft: dict[str, float | int]) -> str:
    spec = {
        "version": BUILD_VERSION,
        "model": MODEL_CONFIG,
        "vocab_size": VOCAB_SIZE,
        "sft": sft,
        "seed": seed,
        "corpus": corpus_sha256(DATA_DIR / "train.jsonl"),
        "template": format_prompt("{request}"),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _build(path: Path, seed: int, sft: dict[str, float | int]) -> None:
    """Train tokenizer and SFT policy; write them to ``path`` (a fresh directory).

    The tokenizer learns from every training answer, the policy from the SFT mix only.
    """
    corpus = load_corpus("train")
    rows = [r for r in corpus if r["sft"]]
    start = time.perf_counter()
    tokenizer = build_tokenizer(
        [format_prompt(r["prompt"]) + " " + r["response"] for r in corpus], VOCAB_SIZE
    )
    config = MistralConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,  # type: ignore[arg-type]
    )
    # Matrices this small gain nothing from intra-op threads, and on a shared 2-core machine
    # their spin-waits made the SFT ~3x slower (444 s with 2 threads, 151 s with 1, same losses).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Seed a forked RNG: the build is reproducible and leaves the caller's RNG state alone.
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MistralForCausalLM(config)
            losses = supervised_finetune(model, tokenizer, rows, seed=seed, **sft)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.save_pretrained(path / "tokenizer")
    model.save_pretrained(path / "policy")
    meta = {
        "seed": seed,
        "sft": sft,
        "model": MODEL_CONFIG,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sft_seconds": time.perf_counter() - start,
        "sft_loss_first": losses[0],
        "sft_loss_last10": sum(losses[-10:]) / len(losses[-10:]),
    }
    (path / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def build_tiny_setup(
    cache_dir: str | Path,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    sft_steps: int | None = None,
) -> Setup:
    """The tiny preset's :class:`~integrations.worlds.base.Setup`, built once then loaded from cache.

    ``cache_dir/tiny-<hash>/`` holds ``tokenizer/``, ``policy/`` (the SFT model) and
    ``meta.json`` (parameters, SFT time and losses). The hash covers the model and SFT settings,
    the seed and the corpus bytes, so a changed corpus or setting builds anew. ``sft_steps``
    overrides the number of SFT steps (tests use a few). The reference policy is a second,
    frozen load of the same SFT weights. The model is small, so the preset trains in full mode
    (``--probe lm_head`` gives the paper's probe mode).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    sft = dict(SFT_CONFIG)
    if sft_steps is not None:
        if sft_steps < 1:
            raise ValueError(f"sft_steps must be >= 1, got {sft_steps}")
        sft["steps"] = sft_steps
        sft["warmup"] = min(int(sft["warmup"]), sft_steps)
    head = load_shipped_head()
    if head.meta.get("corpus_sha256") != corpus_sha256(DATA_DIR / "train.jsonl"):
        raise ValueError(
            "integrations/worlds/tiny/data/helpful_head.json was fitted on another train.jsonl; refit it "
            "with `python -m integrations.worlds.tiny.scorers --refit`"
        )

    cache_root = Path(cache_dir)
    path = cache_root / f"tiny-{_cache_key(seed, sft)}"
    if not path.exists():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = cache_root / f".{path.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _build(tmp, seed, sft)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # an interrupted build leaves nothing behind
            raise
        try:
            os.replace(tmp, path)  # atomic: a reader never sees a half-written cache entry
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same build
    for part in ("tokenizer", "policy", "meta.json"):
        if not (path / part).exists():
            raise ValueError(f"cache entry {path} is incomplete (no {part}); delete it to rebuild")

    tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
    tokenizer.padding_side = "left"
    policy = MistralForCausalLM.from_pretrained(
        path / "policy", dtype=torch.float32, **LOCAL_MODEL_KWARGS
    )
    policy = policy.to(device)  # type: ignore[arg-type]  # transformers' wrapped .to
    reference = MistralForCausalLM.from_pretrained(
        path / "policy", dtype=torch.float32, **LOCAL_MODEL_KWARGS
    )
    reference = reference.to(device)  # type: ignore[arg-type]  # as above
    reference.eval().requires_grad_(False)
    return Setup(
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        scorers=[EmbeddingHelpfulness(head), OffensiveLanguageCost()],
        train_prompts=rl_prompts(load_corpus("train")),
        eval_prompts=rl_prompts(load_corpus("eval")),
        format_prompt=format_prompt,
        categories=prompt_categories(),
    )
