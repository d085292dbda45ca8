"""The presets' builders: a :class:`~integrations.common.Setup` (policy, reference, scorers,
prompts) for ``cfg.preset``. Their defaults and objectives are data, in
:data:`integrations.config.PRESETS`; the builders are imported only when called (the paper's
pulls in peft, datasets and 7B checkpoints)."""

from __future__ import annotations

from pathlib import Path

import torch

from .common import Scorer, Setup
from .config import Config, objective_names
from .dist import resolve_device


def build_setup(cfg: Config) -> Setup:
    """Load the preset's models, scorers and prompts onto this process's device (and set
    ``--threads``, which every entry point that builds a preset then runs with)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if cfg.preset == "tiny":
        from .tiny import build_tiny_setup

        return build_tiny_setup(Path(cfg.cache_dir).expanduser(), seed=cfg.sft_seed, device=device)
    from .paper import build_paper_setup

    return build_paper_setup(cfg)


def select_scorers(cfg: Config, setup: Setup) -> list[Scorer]:
    """The scorers of ``cfg``'s objectives, in order (the names were checked before loading)."""
    by_name = {s.name: s for s in setup.scorers}
    missing = [n for n in objective_names(cfg) if n not in by_name]
    if missing:
        raise ValueError(
            f"--objectives {' '.join(missing)}: the {cfg.preset} preset built "
            f"scorers {', '.join(by_name)}"
        )
    return [by_name[n] for n in objective_names(cfg)]
