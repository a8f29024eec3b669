"""Checkpoint and weight files: written atomically, read without unpickling arbitrary objects."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from safetensors.torch import load_model, save_model
from torch import nn

from .errors import UserError

__all__ = ["AtomicCheckpointIO", "atomic_write", "load_data_state", "load_weights", "save_data_state", "save_weights"]


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    A crash (even ``kill -9``) leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
