"""The paper world's score models: the beaver reward and cost models as
:class:`~integrations.worlds.base.Scorer` objects, and critics initialised from them.

The beaver-7b-v1.0 reward and cost models (PKU-Alignment, Safe RLHF) are safe-rlhf
``LlamaForScore`` checkpoints. What this loader relies on, checked against the published files:

- config.json (https://huggingface.co/PKU-Alignment/beaver-7b-v1.0-reward/blob/main/config.json,
  same for -cost): ``"model_type": "llama"``, ``"architectures": ["LlamaForScore"]``,
  ``"score_dim": 1``, ``"score_bias": true``, ``"do_normalize": false``, vocab 32001 (LLaMA +
  ``<pad>`` = 32000). The checkpoint was converted to safetensors (7 shards +
  model.safetensors.index.json); the original upload was pytorch_model-*.bin.
- weight names: safe-rlhf's ``LlamaForScore`` holds ``self.model = LlamaModel(config)`` and
  ``self.score_head = nn.Linear(hidden_size, score_dim, bias=...)``
  (safe_rlhf/models/score_model/llama/modeling_llama.py and score_model/__init__.py,
  ``ScoreModelMixin.init_score_head``), so the tensors are ``model.*`` (a plain LlamaModel) and
  ``score_head.weight`` (+ ``score_head.bias`` when ``score_bias``; newer safe-rlhf zero-initialises
  it). Later versions also save ``normalizer.{mean,var,count}`` buffers; early ones named the head
  ``score``. Extra keys are ignored, a missing backbone tensor is an error.
- the sequence score is ``end_scores``: the head applied to the last hidden state at the last
  non-padding position (``end_index = attention_mask.nonzero()[-1]`` per row, ``get_scores``).
- input format (model card): ``"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"``;
  safe-rlhf's ``batch_retokenize`` appends the scorer's EOS token when it re-tokenises policy
  text for a scorer with another tokenizer, which is what :class:`BeaverScorer` does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .models import BEAVER_TEMPLATE, enable_checkpointing, onto, resolve_pretrained, with_lora

__all__ = [
    "BeaverScoreModel",
    "BeaverScorer",
    "ScoreCritic",
    "build_score_critic",
    "load_score_model",
    "score_normalizer",
    "score_tokenizer",
    "transfer_embeddings",
]


def _checkpoint_tensors(path: Path, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Read the named tensors (those present) from a safetensors or .bin checkpoint folder."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = path / index_name
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files: dict[str, list[str]] = {}
            for n in names:
                if n in weight_map:
                    files.setdefault(weight_map[n], []).append(n)
        elif (path / single).is_file():
            files = {single: list(names)}
        else:
            continue
        out: dict[str, torch.Tensor] = {}
        for fname, wanted in files.items():
            if fname.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(path / fname), framework="pt") as f:
                    out.update({n: f.get_tensor(n) for n in wanted if n in f.keys()})
            else:
                state = torch.load(path / fname, map_location="cpu", weights_only=True, mmap=True)
                out.update({n: state[n].clone() for n in wanted if n in state})
        return out
    raise ValueError(f"{path} holds no model.safetensors / pytorch_model.bin checkpoint")


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' load report while loading a backbone out of a score checkpoint: the
    head's keys are expected there (read separately); missing keys are still checked."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _quantization_config(quantization: str | None, option: str) -> Any:
    if quantization is None:
        return None
    if quantization not in ("8bit", "4bit"):
        raise ValueError(f"quantization must be None, '8bit' or '4bit', got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"{option} needs bitsandbytes (and a CUDA GPU): `pip install bitsandbytes`, or drop "
            f"{option} to keep the scorers in bf16"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )


class BeaverScoreModel(nn.Module):
    """safe-rlhf ``LlamaForScore`` on transformers parts: a decoder backbone and a linear head.

    score(x) = W h_e + b, h_e the last hidden state at e = the last position whose attention
    mask is 1 (works for left and right padding); with ``do_normalize`` in the config the score
    is normalised as safe-rlhf does: (s - mean) / (std + 1e-8) for a reward, s / (std + 1e-8)
    for a cost.
    """

    backbone: Any  # a transformers decoder (``*Model``), possibly bitsandbytes-quantised
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        backbone: Any,
        score_head: nn.Linear,
        *,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.score_head = score_head
        self.register_buffer(
            "mean", mean if mean is not None else torch.zeros(()), persistent=False
        )
        self.register_buffer("std", std if std is not None else torch.ones(()), persistent=False)

    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-position scores [B, T, score_dim] in float32 (before normalisation)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.score_head(hidden.to(self.score_head.weight.dtype)).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """End scores [B, score_dim] in float32."""
        scores = self.token_scores(input_ids, attention_mask)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        end = (attention_mask.to(torch.long) * positions).argmax(dim=1)
        end_scores = scores[
            torch.arange(scores.shape[0], device=scores.device), end.to(scores.device)
        ]
        return (end_scores - self.mean) / self.std


def load_score_model(
    name_or_path: str | os.PathLike[str],
    *,
    option: str = "--reward-model",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    quantization: Literal["8bit", "4bit"] | None = None,
) -> tuple[BeaverScoreModel, Any]:
    """Load a safe-rlhf ``LlamaForScore`` checkpoint (local folder or hub id), frozen, in eval mode.

    Returns the model and its own tokenizer. ``quantization`` loads the backbone's linear layers
    through bitsandbytes (the score head stays in float32).
    """
    from transformers import AutoConfig, AutoModel

    path = resolve_pretrained(name_or_path, option=option)
    config = AutoConfig.from_pretrained(path)
    bnb = _quantization_config(
        quantization, "--load-in-8bit" if quantization == "8bit" else "--load-in-4bit"
    )
    kwargs: dict[str, Any] = {"dtype": dtype, "output_loading_info": True, **onto(device)}
    if bnb is not None:
        kwargs.update(quantization_config=bnb)
    with _quiet_load_report():  # score_head.* / normalizer.* are "unexpected" to a LlamaModel
        backbone, info = AutoModel.from_pretrained(path, **kwargs)
    if info["missing_keys"]:
        raise ValueError(
            f"{option}: {path} lacks backbone weights {sorted(info['missing_keys'])[:5]}...: not a "
            "safe-rlhf LlamaForScore checkpoint (model.* + score_head.*)"
        )
    head_names = ("score_head.weight", "score_head.bias", "score.weight", "score.bias")
    tensors = _checkpoint_tensors(path, head_names)
    prefix = "score_head" if "score_head.weight" in tensors else "score"
    if f"{prefix}.weight" not in tensors:
        raise ValueError(
            f"{option}: {path} has no score_head.weight: not a LlamaForScore checkpoint"
        )
    weight = tensors[f"{prefix}.weight"].float()
    bias = tensors.get(f"{prefix}.bias")
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias.float())
    mean, std = score_normalizer(config)
    model = BeaverScoreModel(backbone, head, mean=mean, std=std)
    model.score_head.to(device)  # the backbone is there already (and bnb's cannot move)
    model.mean, model.std = model.mean.to(device), model.std.to(device)
    model.eval().requires_grad_(False)
    return model, score_tokenizer(path)


def score_normalizer(config: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(mean, std) of safe-rlhf's score normalisation from a score model's config (None: none)."""
    mean = std = None
    if getattr(config, "do_normalize", False):
        kind = getattr(config, "score_type", "reward")
        var = torch.tensor(getattr(config, "var", None) or [1.0])
        std = var.sqrt() + 1e-8
        if kind == "reward":
            mean = torch.tensor(getattr(config, "mean", None) or [0.0])
        elif kind != "cost":
            std = None
    return mean, std


def score_tokenizer(path: Path) -> Any:
    """A score model's own tokenizer, with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out: any id will do
    return tokenizer


@dataclass
class BeaverScorer:
    """A beaver score model as one objective (:class:`~integrations.worlds.base.Scorer`).

    The policy's text is re-tokenised with the scorer's own tokenizer in the beaver format
    (:data:`BEAVER_TEMPLATE`) + the scorer's EOS token, as safe-rlhf's ``batch_retokenize`` does;
    sequences longer than ``max_length`` lose their beginning (the score is read at the end).
    """

    name: str
    kind: Literal["reward", "cost"]
    model: BeaverScoreModel
    tokenizer: Any
    batch_size: int = 16
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("reward", "cost"):
            raise ValueError(f"kind must be 'reward' or 'cost', got {self.kind!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.tokenizer.truncation_side = "left"  # keep the end, where the score is read

    def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        """The scorer's input strings: beaver format, response stripped as in the model card."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"prompts and responses must pair up, got {len(prompts)} and {len(responses)}"
            )
        eos = self.tokenizer.eos_token or ""
        return [
            BEAVER_TEMPLATE.format(prompt=p.strip(), response=r.strip()) + eos
            for p, r in zip(prompts, responses, strict=True)
        ]

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """End score of each (prompt, response): float32 [B] on CPU (a cost for kind "cost")."""
        texts = self.texts(prompts, responses)
        device = self.model.score_head.weight.device
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                return_tensors="pt",
            )
            scores = self.model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out.append(scores[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


def transfer_embeddings(
    weight: torch.Tensor, src_tokenizer: Any, dst_tokenizer: Any, num_embeddings: int | None = None
) -> torch.Tensor:
    """Embedding rows for ``dst_tokenizer``'s vocabulary built from ``weight`` (``src`` vocabulary).

    A destination token whose string exists in the source vocabulary takes that row; any other
    token takes the mean of the rows of its text re-tokenised by the source tokenizer (the mean of
    all rows when that is empty, and for ids no token maps to); the special tokens (bos, eos, pad,
    unk) map onto their source counterparts. With identical tokenizers this is the identity.
    """
    src_vocab: dict[str, int] = src_tokenizer.get_vocab()
    dst_vocab: dict[str, int] = dst_tokenizer.get_vocab()
    size = num_embeddings or max(len(dst_tokenizer), max(dst_vocab.values()) + 1)
    mean = weight.float().mean(dim=0)
    out = mean.repeat(size, 1)
    composite: list[tuple[int, str]] = []
    for token, idx in dst_vocab.items():
        if idx >= size:
            continue
        if token in src_vocab:
            out[idx] = weight[src_vocab[token]].float()
        else:
            composite.append((idx, dst_tokenizer.convert_tokens_to_string([token])))
    if composite:
        encoded = src_tokenizer([t for _, t in composite], add_special_tokens=False)["input_ids"]
        for (idx, _), ids in zip(composite, encoded, strict=True):
            if ids:
                out[idx] = weight[ids].float().mean(dim=0)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        d, s = getattr(dst_tokenizer, attr, None), getattr(src_tokenizer, attr, None)
        if d is not None and s is not None and d < size:
            out[d] = weight[s].float()
    return out.to(weight.dtype)


class ScoreCritic(nn.Module):
    """A critic initialised from a score model (Safe RLHF initialises its critics this way).

    values[b, t] = w · h_t + c on the policy's tokens, (w, c) the score head, h_t the score
    model's backbone run on the policy's token ids through transferred embeddings
    (:func:`transfer_embeddings`), so the critic reads the policy's sequences directly.
    """

    backbone: Any  # a transformers decoder, possibly wrapped by peft

    def __init__(self, backbone: Any, value_head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = value_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token values [B, T] in float32."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.value_head(hidden.float()).squeeze(-1)


def build_score_critic(
    name_or_path: str | os.PathLike[str],
    policy_tokenizer: Any,
    *,
    option: str = "--reward-model",
    num_embeddings: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    lora_r: int = 0,
    lora_alpha: int | None = None,
    gradient_checkpointing: bool = True,
) -> ScoreCritic:
    """A trainable :class:`ScoreCritic` from a score checkpoint, reading ``policy_tokenizer``'s ids.

    ``num_embeddings`` is the policy's vocabulary size (``policy.config.vocab_size``). With
    ``lora_r > 0`` the backbone is frozen with LoRA adapters and the value head (float32) trains
    fully; otherwise everything trains.
    """
    model, scorer_tokenizer = load_score_model(
        name_or_path, option=option, dtype=dtype, device=device
    )
    if model.score_head.out_features != 1:
        raise ValueError(
            f"{option}: a critic needs score_dim 1, got {model.score_head.out_features}"
        )
    backbone: Any = model.backbone
    old = backbone.get_input_embeddings().weight.detach()
    rows = transfer_embeddings(old, scorer_tokenizer, policy_tokenizer, num_embeddings)
    embedding = nn.Embedding(rows.shape[0], rows.shape[1], dtype=old.dtype, device=old.device)
    with torch.no_grad():
        embedding.weight.copy_(rows)
    backbone.set_input_embeddings(embedding)
    backbone.config.vocab_size = rows.shape[0]
    backbone.config.use_cache = False  # a critic never generates
    head = model.score_head
    backbone.requires_grad_(True)
    head.requires_grad_(True)
    if gradient_checkpointing:
        enable_checkpointing(backbone)
    if lora_r > 0:
        backbone = with_lora(backbone, lora_r, lora_alpha, option="--lora-r")
    return ScoreCritic(backbone, head).to(device).train()
