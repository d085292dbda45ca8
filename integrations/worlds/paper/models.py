"""The paper world's policy: loading it (bf16 or float32, LoRA through peft, gradient
checkpointing), its frozen reference and its chat format, from a local folder or the hub cache.
The score models are in :mod:`.scorers`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BEAVER_TEMPLATE",
    "enable_checkpointing",
    "format_chat",
    "load_policy",
    "load_reference",
    "policy_tokenizer",
    "resolve_pretrained",
    "with_lora",
]

# the beaver score models' input format (model card), and the chat format of policies without a
# chat template
BEAVER_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"

_MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def onto(device: str | torch.device) -> dict[str, Any]:
    """``from_pretrained`` keywords that read a checkpoint straight onto ``device``: each
    tensor goes from the (memory-mapped) file to this rank's GPU, so a replicated model (LoRA,
    DDP) never sits whole in host memory first, once per rank."""
    from ..base import LOCAL_MODEL_KWARGS

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return {**LOCAL_MODEL_KWARGS, "device_map": {"": device}}


def resolve_pretrained(name_or_path: str | os.PathLike[str], *, option: str) -> Path:
    """A local directory for a model given as a local path or a hub id.

    A hub id is served from the local Hugging Face cache, downloading only when the hub is
    reachable (never in offline mode, ``HF_HUB_OFFLINE=1``). ``option`` names the CLI option the
    value came from, for the error message.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{option}: directory {path} has no config.json; pass a model folder")
        return path
    text = str(name_or_path)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1 or path.exists()
    if looks_local:
        raise ValueError(f"{option}: {text!r} is not a model directory (no such folder)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        local = snapshot_download(
            text, allow_patterns=_MODEL_FILES, ignore_patterns=["consolidated*"]
        )
    except (OSError, HfHubHTTPError) as err:
        raise ValueError(
            f"{option}: cannot fetch {text!r} from the Hugging Face hub (offline, not cached, or "
            f"no such repository: {type(err).__name__}). Download it where the hub is reachable "
            f"(`hf download {text} --local-dir DIR`) and pass {option} DIR"
        ) from err
    return Path(local)


def enable_checkpointing(model: Any) -> None:
    """Checkpoint every decoder layer, non-reentrant (frozen inputs under LoRA still get grads)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def with_lora(model: Any, r: int, alpha: int | None, *, option: str) -> Any:
    if importlib.util.find_spec("peft") is None:
        raise ValueError(f"{option} > 0 needs peft: `pip install peft`, or pass {option} 0")
    from peft import LoraConfig, get_peft_model

    from .shapes import LORA_TARGETS

    config = LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
    )
    return get_peft_model(model, config)


def format_chat(tokenizer: Any, request: str) -> str:
    """The policy's input text for a raw request: its chat template with the generation prompt.

    A leading BOS token is left out when the tokenizer adds it when encoding (Mistral's); one that
    does not (SmolLM2's, whose BOS is the template's first ``<|im_start|>``) keeps it. A tokenizer
    without a chat template gets the beaver/Safe RLHF format.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True
        )
        bos = tokenizer.bos_token
        adds_bos = bos is not None and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id]
        return text[len(bos) :] if adds_bos and text.startswith(bos) else text
    return BEAVER_TEMPLATE.format(prompt=request, response="")


def load_policy(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    gradient_checkpointing: bool = True,
    lora_r: int = 0,
    lora_alpha: int | None = None,
) -> tuple[Any, Any, Callable[[str], str]]:
    """The policy to train: any causal LM (local folder or hub id), its tokenizer and chat format.

    bf16 by default, gradient checkpointing on (non-reentrant, so frozen inputs under LoRA still
    get gradients), optional LoRA on every linear map of the decoder (peft; the reference is then
    the same model inside ``with policy.disable_adapter():``). The tokenizer pads on the left for
    generation and has a pad token.
    """
    from transformers import AutoModelForCausalLM

    if lora_r < 0:
        raise ValueError(f"--lora-r must be >= 0, got {lora_r}")
    path = resolve_pretrained(name_or_path, option="--policy")
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **onto(device))
    if gradient_checkpointing:
        enable_checkpointing(model)
    if lora_r > 0:
        model = with_lora(model, lora_r, lora_alpha, option="--lora-r")
    model.to(device).train()
    tokenizer = policy_tokenizer(path, model)
    return model, tokenizer, functools.partial(format_chat, tokenizer)


def policy_tokenizer(path: Path, model: Any) -> Any:
    """The policy's tokenizer, padding on the left for generation, with a pad token (also set
    in ``model``'s generation config)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:  # silences generate()'s per-call warning
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def load_reference(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> Any:
    """A frozen copy of the policy's initial weights (full fine-tuning only)."""
    from transformers import AutoModelForCausalLM

    path = resolve_pretrained(name_or_path, option="--policy")
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **onto(device))
    return model.eval().requires_grad_(False)
