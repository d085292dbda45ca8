"""Loading the paper world's models into FSDP2 shards (DESIGN.md §5): every rank builds each
model on the meta device, shards it, allocates only its own shards (``to_empty``), and rank 0
alone reads the checkpoint and broadcasts it into them
(``set_model_state_dict(..., StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))``:
one tensor at a time, each rank keeping its slice). No rank but 0 ever holds a whole model, and
rank 0 holds the checkpoint's tensors once (in their stored dtype) for the policy and its
reference together. Trainable models are built in float32, so their master weights are made
from the shards; frozen ones in bf16.

The run says how to shard and how rank 0 shares its outcome (:class:`Sharded`): this world
imports nothing of the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")

__all__ = ["Sharded", "fill", "materialize", "on_meta", "read_weights"]


@dataclass(frozen=True)
class Sharded:
    """What a world needs from the run to load its models sharded.

    ``shard(model, trainable)``: ``fully_shard`` the transformer trunks of ``model`` (built on the
    meta device) in the run's precision (trainable) or bf16 (frozen). ``on_main(fn)``: run ``fn``
    on rank 0 and share its outcome (its exception raised on every rank). ``device``: this rank's.
    """

    shard: Callable[[nn.Module, bool], None]
    on_main: Callable[[Callable[[], Any]], Any]
    device: str

    @property
    def main(self) -> bool:
        import torch.distributed as dist

        return not dist.is_initialized() or dist.get_rank() == 0


def on_meta(factory: Callable[[], T]) -> T:
    """``factory()`` with every parameter on the meta device (no memory) and the buffers real
    (rotary frequencies, score normalisers: computed from the config, not stored)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def materialize(model: nn.Module, device: str | torch.device) -> None:
    """Allocate ``model``'s (sharded) parameters on ``device``, uninitialised, keeping the values
    of its buffers (``to_empty`` would drop them)."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if not b.is_meta}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name].to(b.dtype))


def fill(model: nn.Module, full: dict[str, torch.Tensor] | None) -> None:
    """Broadcast rank 0's full state dict ``full`` (None on the other ranks) into ``model``'s
    shards; each value is cast to the dtype of the parameter it lands in (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, dict(full or {}), options=options)  # it pops from its argument


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint folder ``path`` (safetensors, sharded or not; or
    ``pytorch_model*.bin``) on the CPU, in its stored dtype. Rank 0 only."""
    path = Path(path)
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = path / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (path / single).is_file():
            files = [single]
        else:
            continue
        out: dict[str, torch.Tensor] = {}
        for name in files:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                out.update(load_file(str(path / name)))
            else:
                out.update(torch.load(path / name, map_location="cpu", weights_only=True))
        return out
    raise ValueError(f"{path} holds no model.safetensors / pytorch_model.bin checkpoint")


def check_complete(
    model: nn.Module, full: dict[str, torch.Tensor], path: Path, option: str
) -> None:
    """Rank 0: every parameter and persistent buffer of ``model`` has a tensor in ``full`` of
    its shape (a tied output embedding takes the input embedding's)."""
    expected = {
        name: tuple(t.shape)
        for name, t in model.state_dict().items()
        if not name.endswith("_extra_state")
    }
    for name in expected:
        if name not in full and name.endswith("lm_head.weight"):
            embed = name.replace("lm_head.weight", "model.embed_tokens.weight")
            if embed in full:
                full[name] = full[embed]
    missing = sorted(set(expected) - set(full))
    if missing:
        raise ValueError(f"{option}: {path} lacks weights {missing[:5]}... of the model it names")
    wrong = [n for n, shape in expected.items() if tuple(full[n].shape) != shape]
    if wrong:
        raise ValueError(
            f"{option}: {path}: {wrong[0]} is {tuple(full[wrong[0]].shape)}, the model "
            f"built from its config.json wants {expected[wrong[0]]}"
        )


# ----------------------------------------------------------------------------- the models


def _causal_lm(path: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    model = on_meta(lambda: AutoModelForCausalLM.from_config(config, dtype=dtype))
    model.tie_weights()
    try:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: from_config's default
        pass
    return model


def load_policy_and_reference(
    path: Path, sharded: Sharded, *, gradient_checkpointing: bool, reference: bool
) -> tuple[Any, Any]:
    """The policy (float32 master shards, trainable) and, for full fine-tuning, its frozen
    reference (bf16 shards), both filled from one read of the checkpoint by rank 0."""
    from .models import enable_checkpointing

    policy = _causal_lm(path, torch.float32)
    if gradient_checkpointing:
        enable_checkpointing(policy)
    sharded.shard(policy, True)
    materialize(policy, sharded.device)
    ref = None
    if reference:
        ref = _causal_lm(path, torch.bfloat16).requires_grad_(False)
        sharded.shard(ref, False)
        materialize(ref, sharded.device)
    full: dict[str, torch.Tensor] = {}

    def read() -> None:
        full.update(read_weights(path))
        check_complete(policy, full, path, "--policy")

    sharded.on_main(read)
    fill(policy, full if sharded.main else None)
    if ref is not None:
        fill(ref, full if sharded.main else None)
    full.clear()
    return policy.train(), None if ref is None else ref.eval()


def _score_weights(full: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """A LlamaForScore checkpoint's tensors under the names of a module holding ``backbone``
    (the ``model.*`` decoder) and ``head`` (``score_head.*``, or early versions' ``score.*``)."""
    prefix = "score_head." if "score_head.weight" in full else "score."
    out = {}
    for name, tensor in full.items():
        if name.startswith("model."):
            out["backbone." + name[len("model.") :]] = tensor
        elif name.startswith(prefix):
            out[head + "." + name[len(prefix) :]] = tensor
    return out


def _score_parts(path: Path, dtype: torch.dtype, vocab: int | None) -> tuple[Any, nn.Linear]:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    if vocab is not None:
        config.vocab_size = vocab
        config.use_cache = False  # a critic never generates
    backbone = on_meta(lambda: AutoModel.from_config(config, dtype=dtype))
    bias = bool(getattr(config, "score_bias", True))
    head = on_meta(
        lambda: nn.Linear(config.hidden_size, int(getattr(config, "score_dim", 1)), bias)
    )
    return backbone, head


def load_score_model_sharded(
    path: Path, sharded: Sharded, *, option: str, mean: Any, std: Any
) -> Any:
    """A frozen :class:`~.scorers.BeaverScoreModel`: bf16 backbone shards, float32 head
    (replicated), filled from rank 0's read of the checkpoint."""
    from .scorers import BeaverScoreModel

    backbone, head = _score_parts(path, torch.bfloat16, None)
    model = BeaverScoreModel(backbone, head, mean=mean, std=std).requires_grad_(False)
    sharded.shard(model, False)
    materialize(model, sharded.device)
    full: dict[str, torch.Tensor] = {}

    def read() -> None:
        full.update(_score_weights(read_weights(path), "score_head"))
        check_complete(model, full, path, option)

    sharded.on_main(read)
    fill(model, full if sharded.main else None)
    return model.eval()


def build_score_critic_sharded(
    path: Path,
    sharded: Sharded,
    policy_tokenizer: Any,
    *,
    option: str,
    num_embeddings: int,
    gradient_checkpointing: bool,
) -> Any:
    """A trainable :class:`~.scorers.ScoreCritic` (float32 master shards from the bf16 score
    checkpoint): rank 0 reads it and moves the embeddings to the policy's vocabulary
    (:func:`~.scorers.transfer_embeddings`) before broadcasting."""
    from transformers import AutoTokenizer

    from .models import enable_checkpointing
    from .scorers import ScoreCritic, transfer_embeddings

    backbone, head = _score_parts(path, torch.float32, num_embeddings)
    if head.out_features != 1:
        raise ValueError(f"{option}: a critic needs score_dim 1, got {head.out_features}")
    if gradient_checkpointing:
        enable_checkpointing(backbone)
    critic = ScoreCritic(backbone, head)
    sharded.shard(critic, True)
    materialize(critic, sharded.device)
    full: dict[str, torch.Tensor] = {}

    def read() -> None:
        full.update(_score_weights(read_weights(path), "value_head"))
        name = "backbone.embed_tokens.weight"
        if name in full:
            scorer_tokenizer = AutoTokenizer.from_pretrained(path)
            full[name] = transfer_embeddings(
                full[name], scorer_tokenizer, policy_tokenizer, num_embeddings
            )
        check_complete(critic, full, path, option)

    sharded.on_main(read)
    fill(critic, full if sharded.main else None)
    return critic.train()
