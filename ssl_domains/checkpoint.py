"""Checkpoint and weight files: written atomically, read without unpickling arbitrary objects."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from safetensors.torch import load_model, save_model
from torch import nn

from .errors import CheckpointWriteError, UserError

__all__ = [
    "AtomicCheckpointIO",
    "atomic_write",
    "link_or_copy",
    "load_data_state",
    "load_weights",
    "save_data_state",
    "save_weights",
]

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _is_full_disk(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    # torch.save's zip writer reports a failed write(2) as a RuntimeError without the errno
    return isinstance(exc, RuntimeError) and "write" in str(exc).lower() and "fail" in str(exc).lower()


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    A crash (even ``kill -9``) leaves either the old file or the new one, never a truncated file. A full disk
    (or quota, or a read-only filesystem) removes the partial temporary file, keeps the old ``path`` and raises
    :class:`CheckpointWriteError` naming the file and the free space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in _FULL:
            raise CheckpointWriteError(f"cannot write {path}: {exc.strerror} ({_free_space(path.parent)})") from exc
        raise
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if _is_full_disk(exc):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the disk is full"
            kept = "the previous version is intact" if path.exists() else "nothing was left behind"
            raise CheckpointWriteError(
                f"cannot write {path}: {reason} ({_free_space(path.parent)} on that filesystem); {kept}"
            ) from exc
        raise


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` atomically: a hard link where the filesystem allows, else a copy."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        atomic_write(target, lambda t: shutil.copyfile(source, t))
        return
    os.replace(tmp, target)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes through a temporary file and loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"checkpoint {path} does not exist") from None
        except Exception as exc:
            raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the model's parameters and buffers as safetensors (no pickle), atomically."""
    atomic_write(path, lambda tmp: save_model(model, str(tmp)))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model``; every key must match."""
    if not Path(path).is_file():
        raise UserError(f"weights file {path} does not exist; was the run finished?")
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path} does not fit this model (missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]}); "
            "was it written by a different plugin or config?"
        )


def save_data_state(state: dict[str, Any], path: Path) -> None:
    """Save what the datamodule fitted on the training data (tensors, numbers, strings, lists, dicts)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_data_state(path: Path) -> dict[str, Any]:
    """Load a datamodule state written by :func:`save_data_state`, with ``weights_only=True``."""
    if not Path(path).is_file():
        return {}
    return torch.load(path, map_location="cpu", weights_only=True)
