"""The authors' trained MERLIN weights (deepdespeckling 0.8, MIT) in our U-Net.

deepdespeckling ships ``merlin/saved_models/{spotlight,stripmap,sentinel_tops}.pth``: plain state dicts whose
keys are exactly our layer names. The TerraSAR-X models (spotlight, stripmap) use the TerraSAR-X constants
``M, m``; ``sentinel_tops`` uses ``M_s, m_s`` (``utils/constants.py``). The constants live in one place, the
plugin's presets (``configs/terrasar-x.yaml``, ``configs/sentinel-1-tops.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_domains import DataError

from .model import MerlinUNet

SENSORS = {"spotlight": "terrasar-x", "stripmap": "terrasar-x", "sentinel_tops": "sentinel-1-tops"}
"""Each published weights file and the preset holding the constants it was trained with."""
_CONSTANTS = ("log_max", "log_min")


def sensor_log_bounds(sensor: str) -> tuple[float, float]:
    """``(M, m)`` for ``sensor``, read from its preset."""
    import importlib.resources

    import yaml

    preset = importlib.resources.files("ssl_domains_sar") / "configs" / f"{SENSORS[sensor]}.yaml"
    section = yaml.safe_load(preset.read_text())["merlin"]
    return float(section["log_max"]), float(section["log_min"])


def _copy_network_weights(model: MerlinUNet, state: dict[str, torch.Tensor], where: str) -> None:
    """Load every network tensor of ``state`` into ``model``, leaving its normalisation constants alone."""
    state = {k: v for k, v in state.items() if k not in _CONSTANTS}
    own = model.state_dict()
    missing = [k for k in own if k not in _CONSTANTS and k not in state]
    wrong = [k for k, v in state.items() if k not in own or v.shape != own[k].shape]
    if missing or wrong:
        raise DataError(
            f"{where} does not fit this U-Net (missing {missing[:3]}, unexpected or mis-shaped {wrong[:3]}); "
            "it must be a MERLIN U-Net of the same width (merlin.width, merlin.decoder_width)"
        )
    model.load_state_dict(state, strict=False)


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
    model = MerlinUNet(*sensor_log_bounds(sensor))
    _copy_network_weights(model, state, str(path))
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
    _copy_network_weights(model, state, f"merlin.init_weights={path}")
