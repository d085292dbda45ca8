"""Sharded, atomic run checkpoints through ``torch.distributed.checkpoint`` (DCP).

Layout of a run directory's checkpoints::

    OUT/checkpoints/step-00000025/
        .metadata, __0_0.distcp, ...   DCP: every rank writes its own shards (model and optimizer
                                       state dicts of torch.distributed.checkpoint.state_dict)
        rng-rank0.safetensors/.json    each rank's random-number-generator states
        meta.json                      JSON: step, world size, anything the caller adds; written last

*Complete or absent.* Everything is written into ``.step-00000025.tmp``; after every rank has
written, rank 0 writes ``meta.json``, syncs the files to disk and renames the directory to
``step-00000025``. A kill at any moment leaves either the previous checkpoint or the new one, never
half of one; stale temporary directories are ignored and removed by the next save.

*Any world size.* DCP stores each tensor's global shape and the offsets of the chunks each rank
wrote, and loads into whatever sharding the live state dict has, so a checkpoint written by 8
processes loads into 1 or 2. Random-number states are per rank: they are restored only at the
world size that wrote them (:func:`restore_rng` says whether it did).

*Loading never runs code from the run directory.* DCP's own reader unpickles ``.metadata`` with
``pickle.load`` and its default planner reads non-tensor values with ``torch.load(...,
weights_only=False)``; here the metadata goes through an unpickler that resolves only the DCP
metadata classes, torch dtypes and ``torch.Size`` (:data:`METADATA_ALLOWLIST`), and non-tensor
values through ``torch.load(weights_only=True)``. RNG states are tensors in safetensors files and
integers in JSON. A crafted file is refused with a ``ValueError``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from .dist import on_every_rank, on_main

__all__ = [
    "METADATA_ALLOWLIST",
    "CheckpointError",
    "checkpoint_dir",
    "fsync_dir",
    "fsync_tree",
    "latest_checkpoint",
    "load",
    "read_meta",
    "read_tensors",
    "restore_rng",
    "save",
]

FORMAT = 2
_STEP_DIR = re.compile(r"^step-(\d{8})$")

# (module, name) pairs the DCP metadata pickle may reference: the metadata dataclasses, the
# storage index of the file system writer, and the torch/pathlib values inside them.
METADATA_ALLOWLIST: frozenset[tuple[str, str]] = frozenset(
    {
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "ChunkStorageMetadata",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    }
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
    }
)


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, from another run, or holds something other than data."""


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`METADATA_ALLOWLIST` and torch dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_ALLOWLIST:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"{module}.{name} is not part of a checkpoint's metadata; refusing to load it"
        )


class _SafeReader(FileSystemReader):
    """DCP's file system reader with :class:`_MetadataUnpickler` in place of ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: not a DCP metadata file of plain data ({err})") from err
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: holds a {type(metadata).__name__}, not DCP Metadata")
        storage_meta = metadata.storage_meta or StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor values with ``weights_only=True``."""

    refused: str | None = None

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            self.refused = f"checkpoint value {fqn} is not plain data ({err})"
            raise CheckpointError(self.refused) from err
        if not self.flatten_state_dict:
            self.state_dict[fqn] = obj
            return
        # the value's place in the nested state dict being loaded, as DefaultLoadPlanner finds it
        *parents, last = self.mappings[fqn]
        node: Any = self.original_state_dict
        for key in parents:
            node = node[key]
        node[last] = obj


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world() -> int:
    return dist.get_world_size() if _distributed() else 1


def fsync_tree(path: Path) -> None:
    """Sync every file under ``path`` (recursively) and each directory to disk."""
    for file in path.iterdir():
        if file.is_dir():
            fsync_tree(file)
        elif file.is_file():
            with open(file, "rb+") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    """Sync a directory's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(root: Path, step: int, state: dict[str, Any], meta: dict[str, Any], keep: int = 1) -> Path:
    """Write ``state`` (state dicts of tensors, DTensors and small values) as checkpoint ``step``.

    Collective: every rank calls it with its own shards. ``meta`` (JSON-serialisable, rank 0's is
    written) lands in ``meta.json`` together with the step and world size. Of the checkpoints in
    ``root`` the newest ``keep`` survive. Returns the checkpoint's directory.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root)
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    rank, world = _rank(), _world()
    text = json.dumps(meta)  # fail before any collective when meta is not JSON

    def prepare() -> None:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step-*"):
            shutil.rmtree(stale)
        tmp.mkdir()

    def commit() -> None:
        record = {"format": FORMAT, "step": step, "world_size": world, **json.loads(text)}
        (tmp / "meta.json").write_text(json.dumps(record, indent=1))
        fsync_tree(tmp)
        if final.exists():  # an abandoned later trajectory of a resumed run
            _remove(final)
        os.replace(tmp, final)
        fsync_dir(root)
        for old in _complete(root)[:-keep]:
            _remove(old)

    # rank 0's directory work is shared with every rank (a failure there stops them all with
    # its message instead of leaving them in the next collective); so is each rank's own write
    on_main(prepare)
    with _single_process_quiet():
        dcp.save(state, storage_writer=FileSystemWriter(tmp), no_dist=not _distributed())
    on_every_rank(lambda: _write_rng(tmp, rank))
    on_main(commit)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint: first renamed out of sight in one step, then file by file."""
    hidden = path.with_name(f".{path.name}.old")
    os.replace(path, hidden)
    shutil.rmtree(hidden)


def _complete(root: Path) -> list[Path]:
    """Complete checkpoints in ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (None when there is none)."""
    found = _complete(Path(root))
    return found[-1] if found else None


def read_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of checkpoint ``path``; ``CheckpointError`` when it is not one."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: no readable meta.json ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "step" not in meta:
        raise CheckpointError(f"{path}: meta.json is not a checkpoint record of this pipeline")
    return meta


def load(path: Path, state: dict[str, Any]) -> None:
    """Load checkpoint ``path`` into ``state`` in place (collective; any world size).

    ``state`` has the structure that was saved, built from the live models and optimizers (their
    state dicts, sharded as they are now); DCP reads each rank's part of every tensor.
    """
    read_meta(path)
    reader = _SafeReader(path)
    reader.read_metadata()  # refuse crafted metadata here, before DCP wraps the error
    planner = _SafePlanner()
    try:
        with _single_process_quiet():
            dcp.load(state, storage_reader=reader, planner=planner, no_dist=not _distributed())
    except dcp.CheckpointException as err:
        if planner.refused is not None:  # DCP wraps what the planner raised on any rank
            raise CheckpointError(f"{path}: {planner.refused}") from err
        raise


def read_tensors(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every tensor of checkpoint ``path`` on the CPU, full size, grouped by the top-level name
    it was saved under (``{"policy": {"model.embed_tokens.weight": ...}, ...}``). One process."""
    metadata = _SafeReader(path).read_metadata()
    flat = {
        key: torch.empty(tuple(md.size), dtype=md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata)
    }
    load(path, flat)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        top, _, rest = key.partition(".")
        grouped.setdefault(top, {})[rest] = tensor
    return grouped


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every single-process call that it assumes a single process: it is one."""
    with warnings.catch_warnings():
        if not _distributed():
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


# ----------------------------------------------------------------------------- RNG states


def _write_rng(path: Path, rank: int) -> None:
    """This rank's RNG states: torch (and CUDA) generators as uint8 tensors in safetensors, the
    Python and NumPy Mersenne twisters as integers in JSON."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    save_file(tensors, str(path / f"rng-rank{rank}.safetensors"))
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    record = {
        "python": [version, list(words), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    (path / f"rng-rank{rank}.json").write_text(json.dumps(record))


def restore_rng(path: Path) -> bool:
    """Restore this rank's RNG states from checkpoint ``path``; False (nothing restored) when the
    checkpoint was written at another world size, where per-rank streams have no counterpart."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(path)
    if meta["world_size"] != _world():
        return False
    rank = _rank()
    try:
        tensors = load_file(str(Path(path) / f"rng-rank{rank}.safetensors"))
        record = json.loads((Path(path) / f"rng-rank{rank}.json").read_text())
        version, words, gauss = record["python"]
        kind, keys, pos, has_gauss, cached = record["numpy"]
        python_state = (int(version), tuple(int(w) for w in words), gauss)
        numpy_state = (str(kind), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss))
        torch_state = tensors["torch"]
    except (OSError, KeyError, ValueError, TypeError, SafetensorError) as err:
        raise CheckpointError(f"{path}: RNG state of rank {rank} unreadable ({err})") from err
    random.setstate(python_state)
    np.random.set_state((*numpy_state, float(cached)))  # noqa: NPY002
    torch.set_rng_state(torch_state)
    cuda = [tensors[f"cuda{i}"] for i in range(len(tensors) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return True
