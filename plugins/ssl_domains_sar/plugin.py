"""MERLIN plugin: metadata and typed config. Imports no torch (``ssl-domains list`` reads this module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssl_domains import ConfigError, ModalityPlugin, Objective, PluginCommand, SSLDataModule, SSLModel, option

if TYPE_CHECKING:  # annotations only: this module must not import torch
    import torch


@dataclass
class MerlinConfig:
    """MERLIN settings (Dalsasso, Denis, Tupin 2021; defaults from the reference ``train.py``)."""

    patch_size: int = option(256, doc="training patch side, a multiple of 32 (reference: 256)")
    patches_per_epoch: int = option(1024, doc="random patches drawn per epoch")
    batch_size: int = option(12, doc="patches per batch (each gives two training pairs: a->b and b->a)")
    log_max: float | None = option(
        None, doc="sensor constant M (upper bound of log|a|); null: estimated from the training data"
    )
    log_min: float | None = option(
        None, doc="sensor constant m (lower bound of log|a|); null: estimated from the training data"
    )
    centre_spectrum: bool = option(
        True, doc="centre each training image's spectrum on zero Doppler, so real and imaginary parts are independent"
    )
    width: int = option(48, doc="encoder channels (reference: 48)")
    decoder_width: int = option(96, doc="decoder channels (reference: 96)")
    init_weights: str | None = option(
        None, doc="start from weights: a run's model.safetensors, or a deepdespeckling .pth (fine-tuning)"
    )
    num_workers: int = option(0, doc="data-loading worker processes")

    def validate(self) -> None:
        """Raise :class:`ConfigError` on a patch the U-Net cannot take or sensor constants in the wrong order."""
        if self.patch_size < 32 or self.patch_size % 32:
            raise ConfigError(f"merlin.patch_size {self.patch_size} must be a multiple of 32 (five 2x poolings)")
        if self.log_max is not None and self.log_min is not None and self.log_max <= self.log_min:
            raise ConfigError(f"merlin.log_max ({self.log_max}) must exceed merlin.log_min ({self.log_min})")


class MerlinPlugin(ModalityPlugin[MerlinConfig]):
    """MERLIN: self-supervised despeckling of single-look complex SAR images (Dalsasso et al., TGRS 2021)."""

    name = "merlin"
    config = MerlinConfig
    description = (
        "MERLIN self-supervised despeckling of single-look complex (SLC) SAR images, with tiled GeoTIFF output"
    )
    paper = (
        "Dalsasso, Denis, Tupin. As if by magic: self-supervised training of deep despeckling networks with "
        "MERLIN. IEEE TGRS 60, 2021. https://doi.org/10.1109/TGRS.2021.3128621"
    )
    extra = "sar"
    requires = ("rasterio", "scipy", "matplotlib")
    data_formats = (
        "a complex GeoTIFF (CInt16, CFloat32, ...) or a two-band GeoTIFF (real, imaginary), read with rasterio",
        "a complex .npy [H, W], or a real .npy [H, W, 2] (real, imaginary)",
        "a folder of such files (searched recursively); amplitude or intensity images are refused",
    )
    batch_keys = {"real": "float32", "imag": "float32", "id": "int64"}
    input_spec = {
        "input": "what the model reads",
        "log_max_M": "sensor constant M: upper bound of log-intensity (fitted or the sensor's)",
        "log_min_m": "sensor constant m: lower bound of log-intensity",
        "normalisation": "the per-component normalisation with M and m",
        "spectrum_centred": "whether the azimuth spectrum is centred first",
        "tile": "training tile side",
    }
    commands = (
        PluginCommand(
            "denoise",
            "ssl_domains_sar.denoise:denoise_command",
            "despeckle an SLC raster of any size: --run DIR IN.tif OUT.tif (tiled, keeps CRS and transform)",
        ),
        PluginCommand(
            "import-weights",
            "ssl_domains_sar.denoise:import_weights_command",
            "make a run from the authors' weights: --weights sentinel_tops|stripmap|spotlight --out DIR",
        ),
    )
    # Clipping: at initialisation R_hat is about a^2, and b^2 / a^2 has no finite mean, so the first steps see
    # rare, huge gradients. The reference's training entry point clips too, at norm 5 (train.py, clip_by_norm=True).
    run_defaults = {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "gradient_clip_val": 1.0},
        "trainer": {"max_epochs": 30},
    }

    def example_overrides(self) -> dict[str, Any]:
        return {"merlin": {"patch_size": 64, "patches_per_epoch": 8, "batch_size": 4, "width": 8, "decoder_width": 16}}

    def datamodule(self, cfg: MerlinConfig, data: Path) -> SSLDataModule:
        from .data import SLCDataModule

        return SLCDataModule(Path(data), cfg)

    def model(self, cfg: MerlinConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import MerlinUNet

        model = MerlinUNet(*datamodule.log_bounds, width=cfg.width, decoder_width=cfg.decoder_width)
        if cfg.init_weights:
            from .weights import load_initial_weights

            load_initial_weights(model, Path(cfg.init_weights))
        return model

    def objective(self, cfg: MerlinConfig) -> Objective:
        from .objective import MerlinObjective

        return MerlinObjective()

    def make_example_data(self, root: Path) -> Path:
        from .data import write_example_slc

        return write_example_slc(Path(root))

    def evaluate(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: MerlinConfig, device: torch.device
    ) -> dict[str, float] | None:
        from .evaluation import evaluate_on_images

        return evaluate_on_images(model, datamodule.images, device)

    def visualize(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: MerlinConfig, out_dir: Path, device: torch.device
    ) -> list[Path]:
        from .figures import plot_despeckling

        return plot_despeckling(model, datamodule.images[0], out_dir / "despeckling.png", device)
