"""The authors' trained MERLIN weights (deepdespeckling 0.8, MIT) in our U-Net.

deepdespeckling ships ``merlin/saved_models/{spotlight,stripmap,sentinel_tops}.pth``: plain state dicts whose
keys are exactly our layer names. The TerraSAR-X models (spotlight, stripmap) use the TerraSAR-X constants
``M, m``; ``sentinel_tops`` uses ``M_s, m_s`` (``utils/constants.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_domains import DataError

from .model import MerlinUNet, default_log_bounds, sentinel_tops_log_bounds

SENSORS = {
    "spotlight": default_log_bounds,
    "stripmap": default_log_bounds,
    "sentinel_tops": sentinel_tops_log_bounds,
}


def official_weights_path(name: str) -> Path:
    """Path of a weights file inside an installed deepdespeckling (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("deepdespeckling")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the official MERLIN weights come with the deepdespeckling package: pip install deepdespeckling==0.8, "
            "or pass the .pth file with --weights"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "merlin" / "saved_models" / f"{name}.pth"
    if not path.is_file():
        raise DataError(f"{path} not found; deepdespeckling 0.8 ships {', '.join(SENSORS)}")
    return path


def load_official(weights: str | Path, sensor: str) -> MerlinUNet:
    """A :class:`MerlinUNet` holding the given ``.pth`` weights (a name in ``SENSORS`` or a file path)."""
    if sensor not in SENSORS:
        raise DataError(f"unknown sensor {sensor!r}; choose one of {', '.join(SENSORS)}")
    path = official_weights_path(str(weights)) if str(weights) in SENSORS else Path(weights)
    if not path.is_file():
        raise DataError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path} is not a PyTorch state dict ({exc}); give a MERLIN .pth file") from None
    model = MerlinUNet(*SENSORS[sensor]())
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # a shape mismatch: not the authors' U-Net
        missing, unexpected = ["(shapes differ)"], []
    missing = [k for k in missing if k not in ("log_max", "log_min")]
    if missing or unexpected:
        raise DataError(
            f"{path} is not a MERLIN U-Net state dict (missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return model


def load_initial_weights(model: MerlinUNet, path: Path) -> None:
    """Fine-tuning: copy network weights (not the normalisation constants) from a run or a ``.pth`` file."""
    if not path.is_file():
        raise DataError(f"merlin.init_weights={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k not in ("log_max", "log_min")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # a shape mismatch
        missing, unexpected = [k for k, v in state.items() if v.shape != model.state_dict()[k].shape], []
    missing = [k for k in missing if k not in ("log_max", "log_min")]
    if missing or unexpected:
        raise DataError(
            f"merlin.init_weights={path} does not fit this U-Net (missing {missing[:3]}, unexpected "
            f"{list(unexpected)[:3]}); check merlin.width and merlin.decoder_width"
        )
