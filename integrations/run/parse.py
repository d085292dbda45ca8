"""Building a :class:`~.config.Config`: from keyword options (:func:`make_config`), from the
command line (:func:`parse_config`, whose ``--help`` is grouped by section), or from the
``config.json`` of a run directory (``--resume``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..ppo.methods import METHODS
from .config import BOOKKEEPING, PAPER, SECTIONS, Config, Preset, flag, option_presets
from .dry_run import dry_run_plan
from .presets import PRESETS
from .validate import validate


def make_config(preset: Preset = "tiny", **given: Any) -> Config:
    """The Config of ``preset`` with the options in ``given`` (option name -> value), checked.

    Defaults come from the preset's row of :data:`~.presets.PRESETS`, then from the option's
    declaration. Giving ``steps`` or ``epochs`` drops the other one's preset default; with LoRA
    the probe defaults to full mode (the LM head is frozen, so there is nothing to probe); a
    scalarised method (morlhf, fast-rl) falls back from a preset's ``score`` critic to ``head``.
    The paper preset, when neither ``critic_init`` nor ``lora_r`` is given, takes the first mode
    of its memory plan that fits a GPU (:func:`~.dry_run.dry_run_plan`) and warns that it did.
    """
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    for name in given:
        if name not in SECTIONS:
            raise TypeError(f"make_config: no option {name!r}")
        scope = option_presets(name)
        if scope is not None and preset not in scope:
            raise ValueError(
                f"{flag(name)} is an option of --preset {' / '.join(scope)}, not of {preset}"
            )
    if "steps" in given and "epochs" in given and None not in (given["steps"], given["epochs"]):
        raise ValueError("give --steps or --epochs, not both (--steps is derived from --epochs)")
    values = dict(PRESETS[preset].defaults)
    if "steps" in given:
        values["epochs"] = None
    if "epochs" in given:
        values["steps"] = None
    if "probe" not in given and given.get("lora_r", 0) > 0:
        values["probe"] = "full"
    method = given.get("method", "gapo")
    if (
        "critic_init" not in given
        and values.get("critic_init") == "score"
        and method in METHODS
        and METHODS[method].streams == "scalarised"
    ):
        values["critic_init"] = "head"  # a scalarised stream has no score model of its own
    if given.get("probe", "full") != "full" and "micro_batch_size" not in given:
        values["micro_batch_size"] = None  # a probe takes the whole update batch in one step
    values.update(given)
    cfg = Config.from_flat({**values, "preset": preset})
    validate(cfg)
    if preset in PAPER and "critic_init" not in given and "lora_r" not in given:
        mode = dry_run_plan(cfg)["mode"]
        if mode["picked"] != mode["configured"]:
            warnings.warn(f"--preset {preset}: {mode['why']}", stacklevel=2)
            return make_config(preset, **given, **mode["options"])
    return cfg


def _none_or(parse: Any) -> Any:
    def parse_optional(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


# option annotations (strings under `from __future__ import annotations`) -> argparse types
PARSERS = {
    "int": int,
    "float": float,
    "str": str,
    "float | None": _none_or(float),
    "int | None": _none_or(int),
    "str | None": str,
}


def build_parser(prog: str = "rlhf_mistral.py") -> argparse.ArgumentParser:
    """Every option as ``--option``, one argument group per section of Config; defaults are left
    out of the namespace (SUPPRESS) so that the parse says which options were given, and
    ``--help`` shows each preset's default."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Multi-objective RLHF (PPO + mogd.MOGD), paper App. B. Subcommands "
        "evaluate / sweep / compare / score: `python integrations/evaluate.py --help`.",
        argument_default=argparse.SUPPRESS,
    )
    defaults = Config()
    for sec in dataclasses.fields(Config):
        group = parser.add_argument_group(sec.metadata["title"])
        for f in dataclasses.fields(getattr(defaults, sec.name)):
            meta = dict(f.metadata)
            meta.pop("bookkeeping")
            meta.pop("added_later")
            if "action" not in meta and "type" not in meta:
                meta["type"] = PARSERS.get(str(f.type), str)
            default = f"(default: {f.default}"
            for preset in PRESETS:
                if f.name in PRESETS[preset].defaults:
                    default += f"; {preset}: {PRESETS[preset].defaults[f.name]}"
            meta["help"] = f"{meta['help']} {default})"
            group.add_argument(flag(f.name), dest=f.name, **meta)
    return parser


def read_run_config(run: Path) -> Config:
    """The Config a run directory was started with: its ``config.json`` (flat, one key per
    option; also as written before the options had sections). ``ValueError`` if unreadable."""
    try:
        return Config.from_flat(json.loads((run / "config.json").read_text()))
    except FileNotFoundError as err:
        raise ValueError(f"--resume {run}: no config.json there (not a run directory)") from err
    except (json.JSONDecodeError, TypeError, AttributeError) as err:
        raise ValueError(f"--resume {run}: config.json is unreadable ({err})") from err


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Config from the command line; with --resume, the run's config.json.

    Options given next to --resume must agree with the saved configuration (a resumed run must
    retrace the uninterrupted one), except the bookkeeping ones (progress bar, plots, ...).
    """
    given = vars(build_parser().parse_args(argv))
    if "resume" not in given:
        return make_config(**given)
    run = Path(given.pop("resume"))
    saved = read_run_config(run).flat()
    for name, value in given.items():
        if name in BOOKKEEPING - {"out"}:
            saved[name] = value
        elif value != saved[name]:
            raise ValueError(
                f"{flag(name)} {value} differs from the resumed run's {saved[name]!r}; "
                "a resumed run keeps its configuration"
            )
    saved["out"] = saved["resume"] = str(run)
    cfg = Config.from_flat(saved)
    validate(cfg)
    return cfg
