"""Prompt sets of the paper preset: PKU-SafeRLHF (training and its test split) and HH-RLHF (test).

PKU-SafeRLHF (https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF, cc-by-nc-4.0) rows are
JSON objects with ``prompt``, ``response_0``, ``response_1``, ``is_response_0_safe``,
``is_response_1_safe``, ``better_response_id``, ``safer_response_id`` (and, in the current
release, ``prompt_source``, ``response_*_source``, harm categories and severity levels), stored as
``data/<generator>/{train,test}.jsonl``; each prompt appears in several rows. Only ``prompt`` is
used here: PPO samples its own responses.

HH-RLHF (https://huggingface.co/datasets/Anthropic/hh-rlhf, MIT) rows hold ``chosen`` and
``rejected`` transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; the prompt is the first Human
turn. Files are ``<subset>/{train,test}.jsonl.gz``.

A source is a hub id (through ``datasets``), a local folder in the hub layout (through
``datasets``), a folder written by ``Dataset.save_to_disk``, or one local ``.json``/``.jsonl``
(optionally ``.gz``) file in the same schema.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "HH_RLHF",
    "PKU_SAFERLHF",
    "first_human_turn",
    "load_hh_prompts",
    "load_pku_prompts",
    "load_records",
]

PKU_SAFERLHF = "PKU-Alignment/PKU-SafeRLHF"
HH_RLHF = "Anthropic/hh-rlhf"
_SPLITS = ("train", "test")


def _read_json_file(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from json.loads(stripped)
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not a JSON object per line ({err.msg})") from err


def load_records(
    source: str | os.PathLike[str], split: str, *, option: str
) -> Iterable[dict[str, Any]]:
    """Rows of ``split`` from a hub dataset, a local dataset folder or a local JSON(L) file."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    path = Path(source).expanduser()
    if path.is_file():
        if not path.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
            raise ValueError(f"{option}: {path} must be a .json or .jsonl(.gz) file")
        return _read_json_file(path)
    import datasets

    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{option}: {path} has splits {list(loaded)}, not {split!r}")
                return loaded[split]
            return loaded
        return datasets.load_dataset(str(path), split=split)
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ValueError(f"{option}: {text!r} is neither a file, a folder nor a hub dataset id")
    try:
        return datasets.load_dataset(text, split=split)
    except Exception as err:  # datasets raises many types for "offline / not cached / no such id"
        raise ValueError(
            f"{option}: cannot load {text!r} (split {split!r}) from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Download it where the hub is reachable (`hf download "
            f"{text} --repo-type dataset --local-dir DIR`) and pass {option} DIR"
        ) from err


def _unique(prompts: Iterable[str], limit: int | None) -> list[str]:
    seen: dict[str, None] = {}
    for p in prompts:
        p = p.strip()
        if p and p not in seen:
            seen[p] = None
            if limit and len(seen) >= limit:
                break
    return list(seen)


def _field(rows: Iterable[dict[str, Any]], key: str, option: str, schema: str) -> Iterator[str]:
    for n, row in enumerate(rows):
        value = row.get(key) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise ValueError(
                f"{option}: row {n} has no string field {key!r}; expected the {schema} schema"
            )
        yield value


def load_pku_prompts(
    source: str | os.PathLike[str] = PKU_SAFERLHF,
    split: str = "train",
    *,
    limit: int | None = None,
    option: str = "--train-prompts",
) -> list[str]:
    """Distinct PKU-SafeRLHF prompts of ``split``, in file order (the first ``limit`` if given)."""
    rows = load_records(source, split, option=option)
    return _unique(_field(rows, "prompt", option, "PKU-SafeRLHF"), limit)


def first_human_turn(transcript: str) -> str:
    """The first ``Human:`` turn of an HH-RLHF transcript, without the speaker tag."""
    _, sep, rest = transcript.partition("Human:")
    if not sep:
        raise ValueError(f"HH-RLHF transcript has no 'Human:' turn: {transcript[:80]!r}")
    return rest.split("\n\nAssistant:", 1)[0].strip()


def load_hh_prompts(
    source: str | os.PathLike[str] = HH_RLHF,
    split: str = "test",
    *,
    limit: int | None = None,
    option: str = "--hh-prompts",
) -> list[str]:
    """Distinct first Human turns of HH-RLHF's ``chosen`` transcripts of ``split``."""
    rows = load_records(source, split, option=option)
    return _unique(map(first_human_turn, _field(rows, "chosen", option, "HH-RLHF")), limit)
