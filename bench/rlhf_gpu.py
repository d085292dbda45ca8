"""End-to-end GPU check of the RLHF pipeline at a few hundred million parameters (issue 7).

No hub on the GPU machine, so everything is built here, offline, with fixed seeds, in a temp dir:

* a randomly initialised ``MistralForCausalLM`` (default ~370M parameters: hidden 1024, 24 layers,
  16 heads / 8 KV heads, MLP 3072, vocabulary 32000), saved in bf16 with a word-level tokenizer
  over a generated vocabulary (chat template included);
* a reward and a cost model in safe-rlhf's ``LlamaForScore`` layout (``model.*`` backbone,
  ``score_head.*``, ``normalizer.*``, two safetensors shards + index, score fields in config.json;
  ~30M parameters each) with their own BPE tokenizer, so the scorers re-tokenise the policy's text
  as with beaver-7b;
* PKU-SafeRLHF-schema prompt files (train and test).

It then runs the real pipeline, ``integrations.rlhf_mistral.train`` with ``--preset mistral-7b``
pointing at those paths, GAPO (p = 1), bf16, for a few PPO steps in each mode:

* ``full``:  ``--probe full`` with ``MOGD_BACKEND=triton`` (per-objective gradients of every
  parameter, the fused Gram / combine Triton kernels);
* ``probe``: ``--probe lm_head`` (the paper's memory saver: per-objective gradients of the LM head,
  one backward of Σ w_i L_i through the model).

The step-time split comes from timing wrappers around the functions ``train()`` looks up at call
time (``rlhf_mistral.generate / score / forward_response``, ``MOGD.step``, the ``gram`` /
``combine`` names ``mogd.optimizer`` imported, the weighting's ``solve``, the inner optimizer's
``step``, ``Tensor.backward`` / ``torch.autograd.grad``); every wrapper synchronises the GPU on
entry and exit and books its *self* time (nested timed calls are subtracted), so the buckets add up
to the step time. "other" = step time minus every bucket (PPO math, the critic, metrics). The first
step (Triton JIT, cuBLAS warm-up) is reported separately and left out of the means.
``save_checkpoint`` is replaced by a no-op (writing ~2 GiB per mode measures the disk, not the
pipeline).

Usage (repo root, package installed: ``pip install --no-build-isolation --no-deps -q -e .``)::

    python bench/rlhf_gpu.py                 # GPU: full + probe, 3 steps each; table to $OUT
    python bench/rlhf_gpu.py --cpu-smoke     # CPU, toy sizes, 1 step: checks the script end to end

Without CUDA (and without --cpu-smoke) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import random
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if "--cpu-smoke" in sys.argv[1:]:
    # The full mode runs the Triton kernels; on CPU that needs the interpreter, which must be
    # chosen before the first `import triton` (transformers imports it too).
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `integrations` is not part of the installed package

import torch  # noqa: E402

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
# Words of the chat template and of the beaver scorer format (BEGINNING OF CONVERSATION: USER: ...)
TEMPLATE_WORDS = ["BEGINNING", "OF", "CONVERSATION", ":", "USER", "ASSISTANT"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}USER : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT :{% endif %}"
)


@dataclass(frozen=True)
class Sizes:
    vocab: int = 32000
    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    kv_heads: int = 8
    intermediate: int = 3072
    max_positions: int = 2048
    score_vocab: int = 8000
    score_hidden: int = 512
    score_layers: int = 8
    score_heads: int = 8
    score_intermediate: int = 1408
    score_max_positions: int = 1024
    prompts: int = 256


GPU_SIZES = Sizes()
SMOKE_SIZES = Sizes(
    vocab=1000,
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=128,
    max_positions=256,
    score_vocab=300,
    score_hidden=32,
    score_layers=2,
    score_heads=4,
    score_intermediate=64,
    score_max_positions=512,
    prompts=16,
)


# ----------------------------------------------------------------------------- offline world


def make_words(n: int, seed: int) -> list[str]:
    """n distinct lower-case pseudo-words of 1-4 consonant-vowel syllables."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words: dict[str, None] = {}
    while len(words) < n:
        words["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))] = None
    return list(words)


def _wrap(tok: Any) -> Any:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def policy_tokenizer(words: list[str]) -> Any:
    """Word level, one id per word: len == len(SPECIAL + TEMPLATE_WORDS + words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL + TEMPLATE_WORDS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = _wrap(tok)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def scorer_tokenizer(words: list[str], vocab_size: int) -> Any:
    """BPE over the same words: most split into sub-words, so the scorers must re-tokenise."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False
    )
    tok.train_from_iterator([" ".join(TEMPLATE_WORDS), *words], trainer)
    return _wrap(tok)


def save_policy(folder: Path, tok: Any, s: Sizes, device: str, seed: int) -> int:
    """Random MistralForCausalLM saved in bf16 with its tokenizer; returns its parameter count."""
    from transformers import MistralConfig, MistralForCausalLM

    if len(tok) != s.vocab:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, the model {s.vocab}")
    config = MistralConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=s.max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # initialising ~400M parameters on the GPU takes no time
        model = MistralForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def save_score_model(folder: Path, tok: Any, s: Sizes, device: str, seed: int, kind: str) -> int:
    """A safe-rlhf LlamaForScore in the published layout (as tests/test_paper_scale.py builds it,
    at a configurable size): ``model.*`` backbone, ``score_head.*``, ``normalizer.*`` in two
    safetensors shards + index, score fields in config.json, bf16. Returns its parameter count."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=s.score_hidden,
        intermediate_size=s.score_intermediate,
        num_hidden_layers=s.score_layers,
        num_attention_heads=s.score_heads,
        num_key_value_heads=s.score_heads,
        max_position_embeddings=s.score_max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        backbone = LlamaModel(config)
        head = torch.nn.Linear(s.score_hidden, 1)
    state = {
        f"model.{k}": v.detach().to("cpu", torch.bfloat16).contiguous()
        for k, v in backbone.state_dict().items()
    }
    state["score_head.weight"] = head.weight.detach().to("cpu", torch.bfloat16).contiguous()
    state["score_head.bias"] = head.bias.detach().to("cpu", torch.bfloat16).contiguous()
    state["normalizer.mean"] = torch.zeros(1)
    state["normalizer.var"] = torch.ones(1)
    state["normalizer.count"] = torch.zeros(1, dtype=torch.long)
    folder.mkdir(parents=True)
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    cfg = config.to_dict()
    cfg.update(
        architectures=["LlamaForScore"],
        score_dim=1,
        bias=False,
        score_bias=True,
        score_type=kind,
        do_normalize=False,
        normalizer_type=None,
        torch_dtype="bfloat16",
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(folder)
    n = sum(p.numel() for p in backbone.parameters()) + s.score_hidden + 1
    del backbone, head
    return n


def save_prompts(path: Path, words: list[str], n: int, seed: int) -> None:
    """PKU-SafeRLHF rows (every field of the schema; only ``prompt`` is read)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            row = {
                "prompt": " ".join(rng.choices(words, k=rng.randint(8, 24))),
                "response_0": " ".join(rng.choices(words, k=8)),
                "response_1": " ".join(rng.choices(words, k=8)),
                "is_response_0_safe": rng.random() < 0.5,
                "is_response_1_safe": rng.random() < 0.5,
                "better_response_id": rng.randint(0, 1),
                "safer_response_id": rng.randint(0, 1),
            }
            f.write(json.dumps(row) + "\n")


def build_world(root: Path, s: Sizes, device: str, seed: int = 0) -> dict[str, Any]:
    words = make_words(s.vocab - len(SPECIAL) - len(TEMPLATE_WORDS), seed)
    p_tok = policy_tokenizer(words)
    s_tok = scorer_tokenizer(words, s.score_vocab)
    paths = {name: root / name for name in ("policy", "reward", "cost")}
    info: dict[str, Any] = {"paths": paths}
    info["policy_params"] = save_policy(paths["policy"], p_tok, s, device, seed)
    info["score_params"] = save_score_model(paths["reward"], s_tok, s, device, seed + 1, "reward")
    save_score_model(paths["cost"], s_tok, s, device, seed + 2, "cost")
    paths["train"], paths["test"] = root / "train.jsonl", root / "test.jsonl"
    save_prompts(paths["train"], words, s.prompts, seed + 3)
    save_prompts(paths["test"], words, max(8, s.prompts // 8), seed + 4)
    info["score_vocab"] = len(s_tok)
    return info


# ----------------------------------------------------------------------------- timing


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Profile:
    """Self time per bucket (nested timed calls subtracted), cut into PPO steps."""

    totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    steps: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    notes: dict[str, Any] = field(default_factory=dict)
    mogd_depth: int = 0
    _stack: list[list[float]] = field(default_factory=list)
    _open: dict[str, Any] | None = None

    def timed(self, bucket: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = bucket() if callable(bucket) else bucket
            _sync()
            frame = [0.0]  # time spent in timed calls nested in this one
            self._stack.append(frame)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync()
                elapsed = time.perf_counter() - start
                self._stack.pop()
                self.totals[name] += elapsed - frame[0]
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][0] += elapsed

        return wrapper

    def begin_step(self) -> None:
        _sync()
        self._open = {"t0": time.perf_counter(), "base": dict(self.totals), "tokens": {}}

    def count_tokens(self, rollout: Any) -> None:
        if self._open is None:
            return
        mask, attn = getattr(rollout, "mask", None), getattr(rollout, "attn", None)
        if mask is not None:
            self._open["tokens"]["generated"] = int(mask.sum())
            self._open["tokens"]["positions"] = int(mask.numel())
        if attn is not None:
            self._open["tokens"]["total"] = int(attn.sum())

    def end_step(self) -> None:
        if self._open is None:
            return
        _sync()
        seconds = time.perf_counter() - self._open["t0"]
        base = self._open["base"]
        buckets = {k: v - base.get(k, 0.0) for k, v in self.totals.items()}
        buckets = {k: v for k, v in buckets.items() if v > 0}
        buckets["other"] = seconds - sum(buckets.values())
        self.steps.append({"seconds": seconds, "buckets": buckets, **self._open["tokens"]})
        self._open = None


@contextlib.contextmanager
def instrumented(prof: Profile) -> Iterator[None]:
    """Patch the names train() and MOGD look up at call time; restore them afterwards."""
    import mogd
    import mogd.ops
    import mogd.optimizer
    from integrations import rlhf_mistral as rl

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, make: Callable[[Any], Any]) -> None:
        if not hasattr(obj, name):
            print(f"  [warn] {getattr(obj, '__name__', obj)}.{name} not found: not timed")
            return
        original = getattr(obj, name)
        saved.append((obj, name, original))
        setattr(obj, name, make(original))

    def generate(fn: Any) -> Any:
        timed = prof.timed("gen", fn)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            prof.begin_step()  # train() starts every step with the rollout
            ro = timed(*args, **kwargs)
            prof.count_tokens(ro)
            return ro

        return wrapper

    def step_metrics(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            row = fn(*args, **kwargs)
            prof.end_step()  # the last call of a step before the (skipped) checkpoint
            return row

        return wrapper

    def forward_response(fn: Any) -> Any:
        timed = prof.timed("forward", fn)

        def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
            if torch.is_grad_enabled() and "checkpointing" not in prof.notes:
                layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
                configured = any(m.gradient_checkpointing for m in layers)
                prof.notes["checkpointing"] = {
                    "configured": configured,
                    "policy_training_mode": bool(model.training),
                    # transformers checkpoints a layer only when it is in training mode
                    "effective": configured and any(m.training for m in layers),
                }
            return timed(model, *args, **kwargs)

        return wrapper

    def mogd_step(fn: Any) -> Any:
        timed = prof.timed("mogd_other", fn)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            prof.mogd_depth += 1
            try:
                return timed(*args, **kwargs)
            finally:
                prof.mogd_depth -= 1

        return wrapper

    solve_patched: set[type] = set()

    def mogd_init(fn: Any) -> Any:
        def wrapper(self: Any, inner: Any, weighting: Any = None, **kwargs: Any) -> None:
            fn(self, inner, weighting, **kwargs)
            inner.step = prof.timed("optimizer", inner.step)
            cls = type(self.weighting)
            if cls not in solve_patched:
                solve_patched.add(cls)
                patch(cls, "solve", lambda f: prof.timed("weights", f))
            trainable = sum(p.numel() for p in self._trainable())
            probe = self._probe
            prof.notes["trainable_params"] = trainable
            prof.notes["mogd_grad_params"] = (
                trainable if probe is None else sum(p.numel() for p in probe)
            )

        return wrapper

    def counted(name: str) -> Callable[[Any], Any]:
        def make(fn: Any) -> Any:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                prof.notes.setdefault("kernels", defaultdict(int))[name] += 1
                return fn(*args, **kwargs)

            return wrapper

        return make

    backward_bucket = lambda: "backward" if prof.mogd_depth else "critic_backward"  # noqa: E731
    patch(rl, "generate", generate)
    patch(rl, "score", lambda f: prof.timed("score", f))
    patch(rl, "forward_response", forward_response)
    patch(rl, "step_metrics", step_metrics)
    patch(rl, "save_checkpoint", lambda f: lambda *a, **k: None)
    patch(mogd.MOGD, "step", mogd_step)
    patch(mogd.MOGD, "__init__", mogd_init)
    patch(mogd.optimizer, "gram", lambda f: prof.timed("gram", f))
    patch(mogd.optimizer, "combine", lambda f: prof.timed("combine", f))
    patch(torch.Tensor, "backward", lambda f: prof.timed(backward_bucket, f))
    patch(torch.autograd, "grad", lambda f: prof.timed(backward_bucket, f))
    # which kernels actually ran (ops imports the Triton modules at call time)
    patch(mogd.ops, "gram_torch", counted("gram_torch"))
    patch(mogd.ops, "combine_torch", counted("combine_torch"))
    patch(mogd.ops, "gram_torch_list", counted("gram_torch_list"))
    patch(mogd.ops, "combine_torch_list", counted("combine_torch_list"))
    try:
        import mogd.kernels.combine_triton as ct
        import mogd.kernels.gram_triton as gt

        patch(gt, "gram_triton", counted("gram_triton"))
        patch(ct, "combine_triton", counted("combine_triton"))
    except ImportError as err:
        print(f"  [warn] Triton kernels not importable: {err}")
    try:
        yield
    finally:
        for obj, name, original in reversed(saved):
            setattr(obj, name, original)


# ----------------------------------------------------------------------------- runs

MODES = {
    "full": ("full", {"MOGD_BACKEND": "triton"}),
    "probe": ("lm_head", {}),
}


def run_mode(mode: str, world: dict[str, Any], args: argparse.Namespace, tmp: Path) -> Profile:
    from integrations import rlhf_mistral as rl

    probe, env = MODES[mode]
    p = world["paths"]
    argv = [
        "--preset", "mistral-7b", "--method", "gapo", "--p", "1", "--probe", probe,
        "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--minibatch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
        "--seed", "0", "--out", str(tmp / f"run-{mode}"), "--eval-size", "0",
        "--save-every", str(args.steps), "--no-plots", "--no-progress",
        "--policy", str(p["policy"]), "--reward-model", str(p["reward"]),
        "--cost-model", str(p["cost"]), "--train-prompts", str(p["train"]),
        "--eval-prompts", str(p["test"]), "--score-batch-size", str(args.batch_size),
    ]  # fmt: skip
    prof = Profile()
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cfg = rl.parse_config(argv)
        with instrumented(prof):
            rl.train(cfg)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return prof


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise(mode: str, prof: Profile, peak: float | None, world: dict[str, Any]) -> dict:
    steps = prof.steps[1:] if len(prof.steps) > 1 else prof.steps  # step 1 = warm-up
    keys = sorted({k for s in steps for k in s["buckets"]})
    b = {k: _mean([s["buckets"].get(k, 0.0) for s in steps]) for k in keys}
    step_s = _mean([s["seconds"] for s in steps])
    gen_tokens = _mean([s.get("generated", 0) for s in steps])
    total_tokens = _mean([s.get("total", 0) for s in steps])
    mogd = sum(b.get(k, 0.0) for k in ("gram", "weights", "combine", "mogd_other"))
    other = b.get("other", 0.0) + b.get("critic_backward", 0.0)
    return {
        "mode": mode,
        "params": world["policy_params"],
        "mogd_grad_params": prof.notes.get("mogd_grad_params"),
        "gen_tok_s": gen_tokens / b["gen"] if b.get("gen") else float("nan"),
        "total_tok_s": total_tokens / step_s if step_s else float("nan"),
        "step_s": step_s,
        "first_step_s": prof.steps[0]["seconds"] if prof.steps else float("nan"),
        "measured_steps": len(steps),
        "gen": b.get("gen", 0.0),
        "score": b.get("score", 0.0),
        "forward": b.get("forward", 0.0),
        "backward": b.get("backward", 0.0),
        "mogd": mogd,
        "optimizer": b.get("optimizer", 0.0),
        "other": other,
        "buckets": b,
        "generated_tokens_per_step": gen_tokens,
        "total_tokens_per_step": total_tokens,
        "peak_gib": peak,
        "kernels": dict(prof.notes.get("kernels", {})),
        "checkpointing": prof.notes.get("checkpointing"),
        "raw_steps": prof.steps,
    }


def _count(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def render(rows: list[dict], failures: dict[str, str], header: list[str]) -> str:
    lines = [*header, ""]
    lines.append(
        "| mode | params | MOGD grads | gen tok/s | total tok/s | step s | gen | score | "
        "fwd (logp) | backward | MOGD | optimizer | other | peak GiB |"
    )
    lines.append("|" + "---|" * 14)
    for r in rows:
        lines.append(
            f"| {r['mode']} | {_count(r['params'])} | {_count(r['mogd_grad_params'])} | "
            f"{_fmt(r['gen_tok_s'], '.0f')} | "
            f"{_fmt(r['total_tok_s'], '.0f')} | {_fmt(r['step_s'])} | {_fmt(r['gen'])} | "
            f"{_fmt(r['score'])} | {_fmt(r['forward'])} | {_fmt(r['backward'])} | "
            f"{_fmt(r['mogd'])} | {_fmt(r['optimizer'])} | {_fmt(r['other'])} | "
            f"{_fmt(r['peak_gib'], '.2f')} |"
        )
    lines.append("")
    lines.append(
        "Times are seconds per PPO step, mean over the steps after the first (warm-up; with one "
        "step, that step). params: policy; MOGD grads: parameters with per-objective gradients."
    )
    lines.append(
        "gen tok/s = sampled response tokens / generation time; total tok/s = prompt + response "
        "tokens of the batch / step time. fwd (logp) = the policy/reference log-prob forwards "
        "(old, reference, update); backward = the per-objective backward passes inside MOGD.step "
        "(probe mode: k probe gradients + one weighted backward); MOGD = Gram + weights + "
        "combine + MOGD's own bookkeeping; other = PPO math, critic, metrics."
    )
    lines.append("")
    lines.append("| mode | first step s | gram | weights | combine | MOGD bookkeeping | kernels |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["buckets"]
        kernels = ", ".join(f"{k}×{v}" for k, v in sorted(r["kernels"].items())) or "-"
        lines.append(
            f"| {r['mode']} | {_fmt(r['first_step_s'])} | {b.get('gram', 0.0) * 1e3:.2f} ms | "
            f"{b.get('weights', 0.0) * 1e3:.2f} ms | {b.get('combine', 0.0) * 1e3:.2f} ms | "
            f"{b.get('mogd_other', 0.0) * 1e3:.2f} ms | {kernels} |"
        )
    for r in rows:
        ck = r["checkpointing"]
        if ck:
            lines.append("")
            lines.append(
                f"{r['mode']}: gradient checkpointing configured={ck['configured']}, policy in "
                f"training mode={ck['policy_training_mode']}, effective={ck['effective']}"
            )
    for mode, tb in failures.items():
        lines.append("")
        lines.append(f"**{mode} FAILED**:")
        lines.append("```")
        lines.extend(tb.rstrip().splitlines()[-25:])
        lines.append("```")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU, 1 step")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=None, help="PPO steps per mode (GPU: 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per step (GPU: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="(GPU: 64)")
    parser.add_argument("--layers", type=int, default=None, help="policy layers (GPU: 24)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("bench/rlhf_gpu.py: no CUDA device; nothing to measure (use --cpu-smoke to check "
              "the script on CPU)")  # fmt: skip
        return 0
    smoke = args.cpu_smoke
    sizes = SMOKE_SIZES if smoke else GPU_SIZES
    if args.layers is not None:
        sizes = Sizes(**{**sizes.__dict__, "layers": args.layers})
    args.steps = args.steps or (1 if smoke else 3)
    args.batch_size = args.batch_size or (4 if smoke else 16)
    args.max_new_tokens = args.max_new_tokens or (8 if smoke else 64)
    device = "cpu" if smoke else "cuda"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a network

    import transformers

    transformers.utils.logging.disable_progress_bar()
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name() if cuda and not smoke else "CPU (smoke run, toy sizes)"
    header = [
        f"## RLHF pipeline on {name}",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"triton {_version('triton')}; GAPO p=1, bf16, batch {args.batch_size}, "
        f"max new tokens {args.max_new_tokens}, {args.steps} PPO steps per mode; policy: random "
        f"Mistral (hidden {sizes.hidden}, {sizes.layers} layers, {sizes.heads}/{sizes.kv_heads} "
        f"heads, MLP {sizes.intermediate}, vocab {sizes.vocab}); reward and cost: random "
        f"beaver-layout LLaMA score models (hidden {sizes.score_hidden}, {sizes.score_layers} "
        f"layers).",
    ]
    rows: list[dict] = []
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mogd-rlhf-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        world = build_world(tmp / "models", sizes, device)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        header[-1] += (
            f" Policy {_count(world['policy_params'])} parameters, each score model "
            f"{_count(world['score_params'])} (scorer vocab {world['score_vocab']})."
        )
        print(f"built models in {time.perf_counter() - t_start:.1f}s", flush=True)
        for mode in args.modes:
            t_mode = time.perf_counter()
            print(f"--- mode {mode}", flush=True)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                # non-zero here would mean the previous mode leaked models into this one's peak
                print(f"    allocated at start: {torch.cuda.memory_allocated() / 2**30:.2f} GiB")
            try:
                prof = run_mode(mode, world, args, tmp)
                peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
                rows.append(summarise(mode, prof, peak, world))
            except Exception:
                failures[mode] = traceback.format_exc()
                print(failures[mode], flush=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            print(f"--- mode {mode}: {time.perf_counter() - t_mode:.1f}s", flush=True)
    header.append("")
    header.append(f"Total wall time of the script: {time.perf_counter() - t_start:.0f} s.")
    text = render(rows, failures, header)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "rlhf_gpu.md").write_text(text)
        (Path(out) / "rlhf_gpu.json").write_text(
            json.dumps({"rows": rows, "failures": failures}, indent=1, default=str)
        )
    return 1 if failures else 0


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "absent"


if __name__ == "__main__":
    sys.exit(main())
