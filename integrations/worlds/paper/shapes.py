"""The paper world's model shapes and parameter counts, from configs only.

``--dry-run`` must answer "does this fit on my GPUs?" without downloading or loading a single
weight, so everything here is arithmetic on config fields (``transformers.AutoConfig`` of a local
path, or the published configs below for the default hub ids).

Parameter count of a LLaMA/Mistral decoder with hidden size h, MLP size I, L layers, key/value
width kv = n_kv_heads * head_dim, vocabulary V:

    embed V*h + L * (2*h*h_q + 2*h*kv + 3*h*I + 2*h) + h (final norm)
    (+ V*h LM head when untied, + h*d (+d) for a score head of dimension d)

with h_q = n_heads * head_dim (= h for both published models).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_COST_MODEL",
    "DEFAULT_POLICY",
    "DEFAULT_REWARD_MODEL",
    "LORA_TARGETS",
    "PUBLISHED_CONFIGS",
    "ModelShape",
    "lora_param_count",
    "shape_from_config",
]

DEFAULT_POLICY = "HuggingFaceH4/mistral-7b-sft-beta"
DEFAULT_REWARD_MODEL = "PKU-Alignment/beaver-7b-v1.0-reward"
DEFAULT_COST_MODEL = "PKU-Alignment/beaver-7b-v1.0-cost"

# Fields of the published config.json files that the arithmetic needs (nothing else is read).
# Mistral: the Mistral-7B-v0.1 architecture that HuggingFaceH4/mistral-7b-sft-beta fine-tunes
# (config.json of models derived from it on the hub carry these exact values).
# Beaver: https://huggingface.co/PKU-Alignment/beaver-7b-v1.0-reward/blob/main/config.json and
# .../beaver-7b-v1.0-cost/blob/main/config.json (identical shapes: "architectures":
# ["LlamaForScore"], vocab 32001 = LLaMA + <pad>, "score_dim": 1, "score_bias": true).
_LLAMA_7B = {
    "model_type": "llama",
    "vocab_size": 32001,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "tie_word_embeddings": False,
    "score_dim": 1,
    "score_bias": True,
}
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    DEFAULT_POLICY: {
        "model_type": "mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },
    DEFAULT_REWARD_MODEL: dict(_LLAMA_7B),
    DEFAULT_COST_MODEL: dict(_LLAMA_7B),
}

# peft LoRA targets: every linear map of a LLaMA/Mistral decoder layer.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a LLaMA-family decoder that fix its parameter count."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    score_dim: int = 1
    score_bias: bool = True

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear map of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_width),
            "k_proj": (h, self.kv_width),
            "v_proj": (h, self.kv_width),
            "o_proj": (self.q_width, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    def layer_params(self) -> int:
        return self.layer_linear_params() + 2 * self.hidden_size  # + two RMSNorm weights

    def backbone_params(self) -> int:
        """Embedding + decoder layers + final norm (transformers' ``*Model``)."""
        h = self.hidden_size
        return self.vocab_size * h + self.num_layers * self.layer_params() + h

    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def causal_lm_params(self) -> int:
        return self.backbone_params() + self.lm_head_params()

    def score_head_params(self) -> int:
        return self.hidden_size * self.score_dim + (self.score_dim if self.score_bias else 0)

    def score_model_params(self) -> int:
        return self.backbone_params() + self.score_head_params()


def shape_from_config(config: Any) -> ModelShape:
    """Read a :class:`ModelShape` from a transformers config object or a config.json dict."""
    fields: dict[str, Any] = dict(config) if isinstance(config, Mapping) else config.to_dict()
    required = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )
    missing = [k for k in required if fields.get(k) is None]
    if missing:
        raise ValueError(
            f"config lacks {missing}: only LLaMA-family decoders (llama, mistral, ...) are "
            "supported by the paper preset"
        )
    hidden, heads = int(fields["hidden_size"]), int(fields["num_attention_heads"])
    kv_heads, head_dim = fields.get("num_key_value_heads"), fields.get("head_dim")
    return ModelShape(
        vocab_size=int(fields["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(fields["intermediate_size"]),
        num_layers=int(fields["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(kv_heads) if kv_heads is not None else heads,
        head_dim=int(head_dim) if head_dim is not None else hidden // heads,
        tie_word_embeddings=bool(fields.get("tie_word_embeddings", False)),
        score_dim=int(fields.get("score_dim") or 1),
        # safe-rlhf's newer configs say "score_bias", older ones only "bias"
        score_bias=bool(fields.get("score_bias", fields.get("bias", False))),
    )


def lora_param_count(shape: ModelShape, r: int, targets: Sequence[str] = LORA_TARGETS) -> int:
    """LoRA adds A [r, in] and B [out, r] to each targeted linear: r * (in + out) per map."""
    lin = shape.linear_shapes()
    unknown = [t for t in targets if t not in lin]
    if unknown:
        raise ValueError(
            f"LoRA targets {unknown} are not linear maps of a decoder layer {tuple(lin)}"
        )
    return shape.num_layers * sum(r * (lin[t][0] + lin[t][1]) for t in targets)
