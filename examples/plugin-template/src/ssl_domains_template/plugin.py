"""Plugin class and config. This module is what the entry point names: it must import without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssl_domains import ModalityPlugin, Objective, PluginCommand, SSLDataModule, SSLModel, option


@dataclass
class DAEConfig:
    """Settings of the denoising autoencoder."""

    hidden_dim: int = option(128, doc="width of the hidden layer")
    embed_dim: int = option(32, doc="size of the representation (the code)")
    mask_rate: float = option(0.3, doc="share of input components set to zero (masking noise)")
    corrupted_weight: float = option(1.0, doc="loss weight of corrupted components (alpha, Vincent 2010 §4.5)")
    clean_weight: float = option(1.0, doc="loss weight of uncorrupted components (beta)")
    batch_size: int = option(64, doc="rows per batch")
    val_fraction: float = option(0.1, doc="share of rows held out for the validation loss")


class DenoisingAutoencoderPlugin(ModalityPlugin[DAEConfig]):
    """Denoising autoencoder with masking noise on numeric feature vectors."""

    name = "dae"
    config = DAEConfig
    description = "Denoising autoencoder (masking noise) on numeric feature vectors; the plugin template"
    paper = (
        "Vincent, Larochelle, Bengio, Manzagol. Extracting and composing robust features with denoising "
        "autoencoders. ICML 2008. https://doi.org/10.1145/1390156.1390294"
    )
    extra = None
    requires = ()
    data_formats = (
        "a .npy file holding a float matrix [rows, features]",
        "a directory with features.npy and optionally labels.npy (int, one per row) for evaluation",
    )
    batch_keys = {"x": "float32", "id": "int64"}
    input_spec = {"num_features": "columns per row", "standardisation": "(x - mean) / std with training statistics"}
    commands = (
        PluginCommand(
            "reconstruct",
            "ssl_domains_template.commands:reconstruct",
            "denoise rows of a .npy file with a trained run: --run DIR --data X.npy --out Y.npy",
        ),
    )
    run_defaults = {"optim": {"lr": 1e-3, "weight_decay": 1e-4}, "trainer": {"max_epochs": 20}}

    def datamodule(self, cfg: DAEConfig, data: Path) -> SSLDataModule:
        from .data import VectorDataModule

        return VectorDataModule(data, cfg)

    def model(self, cfg: DAEConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import DenoisingAutoencoder

        return DenoisingAutoencoder(datamodule.num_features, cfg.hidden_dim, cfg.embed_dim)

    def objective(self, cfg: DAEConfig) -> Objective:
        from .objective import DenoisingObjective

        return DenoisingObjective(cfg.mask_rate, cfg.corrupted_weight, cfg.clean_weight)

    def make_example_data(self, root: Path) -> Path:
        from .data import write_example_data

        # 2,048 rows (200 kB): a few seconds of training, with enough steps per epoch that the kit and the CI
        # can stop a run mid-epoch and resume it
        return write_example_data(Path(root), rows=2048)
