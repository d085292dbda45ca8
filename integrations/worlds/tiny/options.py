"""The tiny world's options (``--preset tiny`` only): the ``cfg.tiny`` section of
:class:`integrations.run.config.Config`, read by :func:`integrations.run.presets.build_setup`
when it builds the world (:func:`.setup.build_tiny_setup`), and by
:func:`integrations.run.learner.build_learner` (``critic_warmup``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...ppo.options import option

__all__ = ["TinyOptions"]


@dataclass
class TinyOptions:
    """Where the tiny world caches its tokenizer and SFT policy, the SFT's seed, and the critic's
    warm-up on SFT rollouts (cached beside the SFT policy)."""

    sft_seed: int = option(0, "seed of the SFT warm-up (cached per seed)")
    cache_dir: str = option(
        "~/.cache/mogd", "cache of the tokenizer and SFT policy", bookkeeping=True
    )
    critic_warmup: int = option(
        0,
        "SFT rollouts the critic regresses on before PPO (cached beside the SFT policy); 0 = "
        "none, the critic starts at V = 0",
        added_later=True,
    )
