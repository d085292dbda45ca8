"""Offline stand-ins for the paper world's checkpoints and prompt files, at any size: for the tests
and the GPU benches; the pipeline itself never imports this module.

The paper preset reads a causal-LM policy folder, two safe-rlhf ``LlamaForScore`` folders (beaver-7b
reward and cost) and PKU-SafeRLHF / HH-RLHF prompt files. These builders write random models and
files in exactly those layouts, so the preset runs end to end with no hub: the tests build tiny
ones, ``bench/rlhf_gpu.py`` a few hundred million parameters on a GPU.

- :func:`policy_tokenizer`: word level (one id per word) with a chat template;
- :func:`scorer_tokenizer`: a small BPE, so most words split into several sub-words and the scorers
  must re-tokenise the policy's text, as with beaver-7b;
- :func:`save_policy`: a random ``MistralForCausalLM`` saved with its tokenizer; :func:`toy_mistral`,
  a 2-layer one in memory;
- :func:`save_score_model`: safe-rlhf's layout: ``model.*`` backbone, ``score_head.*``,
  ``normalizer.*`` in two safetensors shards + index, score fields in config.json;
- :func:`save_pku_prompts`, :func:`random_pku_rows`, :func:`save_hh_prompts`: prompt files.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
# the words of the chat template and of the beaver scorers' format (BEGINNING OF CONVERSATION: ...)
TEMPLATE_WORDS = ["BEGINNING", "OF", "CONVERSATION", ":", "USER", "ASSISTANT"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}USER : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT :{% endif %}"
)


@dataclass(frozen=True)
class PolicySize:
    """A Mistral decoder's shape (GQA attention, SwiGLU MLP)."""

    hidden: int = 32
    intermediate: int = 48
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 128


@dataclass(frozen=True)
class ScorerSize:
    """A LLaMA score model's backbone shape."""

    hidden: int = 32
    intermediate: int = 64
    layers: int = 2
    heads: int = 4
    max_positions: int = 256


class SavedScoreModel(NamedTuple):
    backbone: LlamaModel
    head_weight: torch.Tensor  # [1, hidden], as saved
    head_bias: torch.Tensor  # [1], as saved


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer that prepends BOS, with the special tokens of :data:`SPECIAL`."""
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


def pseudo_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct lower-case pseudo-words of 1-4 consonant-vowel syllables (a vocabulary for
    the offline tokenizers), the same for the same seed."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words: dict[str, None] = {}
    while len(words) < n:
        words["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))] = None
    return list(words)


def policy_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """Word level: ids are SPECIAL, then ``words`` in order (repeats dropped); chat template set."""
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*SPECIAL, *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = wrap_tokenizer(tok)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def scorer_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE of ``vocab_size`` tokens trained on ``texts``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer)
    return wrap_tokenizer(tok)


def toy_mistral(vocab_size: int, *, seed: int = 0, **config: Any) -> MistralForCausalLM:
    """A random 2-layer ``MistralForCausalLM`` (hidden 32, 4 query / 2 key-value heads, untied
    head) in eval mode, for tests that need a real decoder and no tokenizer; ``config`` overrides
    ``MistralConfig`` fields."""
    torch.manual_seed(seed)
    fields: dict[str, Any] = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return MistralForCausalLM(MistralConfig(vocab_size=vocab_size, **{**fields, **config})).eval()


def save_policy(
    folder: Path,
    tokenizer: PreTrainedTokenizerFast,
    size: PolicySize = PolicySize(),
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> MistralForCausalLM:
    """A random ``MistralForCausalLM`` over ``tokenizer``'s vocabulary, saved in ``dtype`` with the
    tokenizer; returns the model (built on ``device``, in eval mode, float32)."""
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # a few hundred million parameters initialise fast on a GPU
        model = MistralForCausalLM(config).eval()
    model.to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.float()


def save_score_model(
    folder: Path,
    tokenizer: PreTrainedTokenizerFast,
    size: ScorerSize = ScorerSize(),
    *,
    seed: int,
    kind: Literal["reward", "cost"] = "reward",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> SavedScoreModel:
    """A random safe-rlhf ``LlamaForScore`` in the published layout, saved in ``dtype``."""
    from safetensors.torch import save_file

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        backbone = LlamaModel(config).eval()
        head = torch.nn.Linear(size.hidden, 1)

    def saved(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", dtype).contiguous()

    state = {f"model.{k}": saved(v) for k, v in backbone.state_dict().items()}
    state["score_head.weight"] = saved(head.weight)
    state["score_head.bias"] = saved(head.bias)
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
    fields = config.to_dict()
    fields.update(
        architectures=["LlamaForScore"],
        score_dim=1,
        bias=False,
        score_bias=True,
        score_type=kind,
        do_normalize=False,
        normalizer_type=None,
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    (folder / "config.json").write_text(json.dumps(fields))
    tokenizer.save_pretrained(folder)
    return SavedScoreModel(backbone, state["score_head.weight"], state["score_head.bias"])


def save_pku_prompts(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """A PKU-SafeRLHF JSONL file (the pipeline reads ``prompt``)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def random_pku_rows(words: Sequence[str], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows with every field of the PKU-SafeRLHF schema, prompts of 8-24 random words."""
    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.choices(words, k=rng.randint(8, 24))),
            "response_0": " ".join(rng.choices(words, k=8)),
            "response_1": " ".join(rng.choices(words, k=8)),
            "is_response_0_safe": rng.random() < 0.5,
            "is_response_1_safe": rng.random() < 0.5,
            "better_response_id": rng.randint(0, 1),
            "safer_response_id": rng.randint(0, 1),
        }
        for _ in range(n)
    ]


def save_hh_prompts(path: Path, requests: Iterable[str]) -> Path:
    """An HH-RLHF ``*.jsonl.gz`` file whose first human turns are ``requests``."""
    with gzip.open(path, "wt") as f:
        for human in requests:
            chosen = f"\n\nHuman: {human}\n\nAssistant: no way\n\nHuman: please\n\nAssistant: no"
            f.write(json.dumps({"chosen": chosen, "rejected": chosen}) + "\n")
    return path
