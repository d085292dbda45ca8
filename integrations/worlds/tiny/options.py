"""The tiny world's options (``--preset tiny`` only): the ``cfg.tiny`` section of
:class:`integrations.run.config.Config`, read by :func:`integrations.run.presets.build_setup`
when it builds the world (:func:`.setup.build_tiny_setup`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...ppo.options import option

__all__ = ["TinyOptions"]


@dataclass
class TinyOptions:
    """Where the tiny world caches its tokenizer and SFT policy, and the SFT's seed."""

    sft_seed: int = option(0, "seed of the SFT warm-up (cached per seed)")
    cache_dir: str = option(
        "~/.cache/mogd", "cache of the tokenizer and SFT policy", bookkeeping=True
    )
