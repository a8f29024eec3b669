"""CROMA and SSL4EO plugins: metadata and typed configs. Imports no torch (``ssl-domains list`` reads this module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ssl_domains import (
    ConfigError,
    ModalityPlugin,
    Objective,
    PluginCommand,
    SSLDataModule,
    SSLModel,
    WeightFormat,
    option,
)

if TYPE_CHECKING:  # annotations only: this module must not import torch
    import torch


@dataclass
class RSDataConfig:
    """Settings of the shared Sentinel-1/2 data module (see ``ssl_domains_rs/data.py``)."""

    s2_level: Literal["L2A", "L1C"] = option("L2A", doc="S2 product: L2A (12 bands, no B10) or L1C (13 bands)")
    s2_bands: list[str] = option(
        default_factory=list, doc="S2 bands in model order (empty: every band of s2_level, B8A after B08)"
    )
    stats: str = option("ssl4eo", doc="per-band statistics: 'ssl4eo' (published) or a JSON from `run croma stats`")
    normalize: Literal["clip2sigma", "zscore"] = option(
        "clip2sigma", doc="fixed per-band scaling: [mean ± 2 std] -> [0, 1] (SSL4EO/CROMA), or z-score"
    )
    quantize: Literal["none", "uint8"] = option(
        "none",
        doc="uint8: chips hold clip2sigma's values floored to 1/255 (u8 / 255), as SSL4EO-S12's LMDB, which its "
        "pretraining read; the pixel cache then takes one byte a value (S2 DN: two); needs normalize: clip2sigma",
    )
    chip: int = option(120, doc="chip side in 10 m pixels, a multiple of patch (CROMA: 120, BigEarthNet's size)")
    train_stride: int = option(0, doc="stride between training windows (0: chip // 2)")
    max_invalid: float = option(0.1, doc="largest share of nodata/cloud pixels in a chip (any view)")
    holdout_quadrant: int = option(
        -1, doc="hold quadrant k (0-3) of every location out of training and evaluate on it (-1: none)"
    )
    batch_size: int = option(32, doc="chips per batch")
    num_workers: int = option(
        0, doc="data-loading workers; each chip is read from its files, so a GPU wants several (the GPU presets: 8)"
    )
    index_cache: bool = option(
        True, doc="cache the chip index on disk ($SSL_DOMAINS_CACHE/index), keyed by the files and these settings"
    )
    cache: Literal["auto", "disk", "none"] = option(
        "auto",
        doc="decoded pixels (every view on the 10 m grid, uint16 S2 / float32 S1, or uint8 with quantize) in one "
        "file beside the index, written in the index's scan and read one chip at a time: disk, none (every chip "
        "from its GeoTIFFs), or auto: disk when it takes at most 80 % of the free space under $SSL_DOMAINS_CACHE",
    )

    def validate(self) -> None:
        """Raise :class:`ConfigError` on inconsistent sizes (called by the core on every resolved config)."""
        patch = int(getattr(self, "patch", 1))
        if self.chip % patch:
            raise ConfigError(
                f"chip {self.chip} is not a multiple of patch {patch}; pick e.g. {max(self.chip // patch, 1) * patch}"
            )
        if self.train_stride < 0:
            raise ConfigError(f"train_stride must be >= 0 (0: chip // 2), got {self.train_stride}")
        if self.quantize == "uint8" and self.normalize != "clip2sigma":
            raise ConfigError(
                "quantize: uint8 keeps clip2sigma's [0, 1] values in 256 steps; set normalize: clip2sigma, or "
                "quantize: none"
            )
        if self.cache == "disk" and not self.index_cache:
            raise ConfigError("cache: disk keeps the pixels with the chip index; set index_cache: true, or cache: none")
        if not -1 <= self.holdout_quadrant <= 3:
            raise ConfigError(f"holdout_quadrant must be -1 or 0..3, got {self.holdout_quadrant}")
        known = {"B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"}
        unknown = [b for b in self.s2_bands if b not in known]
        if unknown:
            raise ConfigError(f"s2_bands {unknown} are not Sentinel-2 bands; use names from {sorted(known)}")

    @property
    def stride(self) -> int:
        """The stride between training windows: ``train_stride``, or half a chip when it is 0."""
        return self.train_stride or max(self.chip // 2, 1)


@dataclass
class CROMAConfig(RSDataConfig):
    """CROMA (Fuller et al. 2023). Defaults are a CPU-sized model; ``--config croma-base|croma-large`` the paper's."""

    patch: int = option(8, doc="patch side (CROMA: 8, 225 tokens on 120² chips)")
    dim: int = option(256, doc="encoder width (base 768, large 1024)")
    depth: int = option(4, doc="optical encoder layers; radar and joint encoders get half (base 12, large 24)")
    heads: int = option(8, doc="attention heads (paper: 16)")
    decoder_dim: int = option(256, doc="MAE decoder width (paper: 512)")
    decoder_depth: int = option(1, doc="MAE decoder layers (paper: 1)")
    decoder_heads: int = option(8, doc="MAE decoder heads (paper: 8)")
    mask_ratio: float = option(0.75, doc="share of each modality's patches masked, independently (paper: 75%)")
    mae_weight: float = option(1.0, doc="weight of the reconstruction loss (reference: unweighted sum)")
    flips: bool = option(True, doc="the same random flip/transpose of both modalities per chip")
    embed_modality: Literal["joint", "optical", "radar"] = option(
        "joint", doc="what `embed` exports: mean joint tokens, or one modality's GAP head"
    )
    # the reference code's choices (antofuller/CROMA @ 59505a6, pretrain_croma.py), for the equivalence check;
    # docs/plugins/croma.md ("Equivalence") lists each with its lines in both code bases
    qkv_bias: bool = option(True, doc="bias on the attention's q/k/v projections (reference: none, L164, L188-190)")
    shared_cross_norm: bool = option(
        False, doc="one LayerNorm for the cross-attention's queries and context, as the reference (L192, L195-196)"
    )
    joint_self_bias: Literal["radar", "cross"] = option(
        "radar",
        doc="joint encoder's radar self-attention bias: 2D-ALiBi of the radar tokens, or the reference's "
        "radar-to-optical X-ALiBi (L115-124, L255)",
    )
    alibi_slopes: Literal["geometric", "alibi"] = option(
        "geometric", doc="slopes for heads not a power of 2: geometric 2^(-8h/H), or ALiBi's recipe (L298-309)"
    )
    decoder_positions: Literal["interleaved", "mae"] = option(
        "interleaved", doc="decoder sin-cos table: rows|columns, sin/cos interleaved; or MAE's layout (L262-291)"
    )
    unbiased_patch_var: bool = option(False, doc="target normalisation with torch.var's n - 1, as the reference (L481)")
    detach_keys: bool = option(
        False, doc="InfoNCE keys without gradient, as the reference's dist.all_gather (L354-357, L382-388)"
    )


REFERENCE_CODE = {
    "qkv_bias": False,
    "shared_cross_norm": True,
    "joint_self_bias": "cross",
    "alibi_slopes": "alibi",
    "decoder_positions": "mae",
    "unbiased_patch_var": True,
    "detach_keys": True,
}
"""The ``croma`` settings that reproduce antofuller/CROMA's ``pretrain_croma.py`` (``benchmarks/_equiv_croma.py``)."""


@dataclass
class SSL4EOConfig(RSDataConfig):
    """SSL4EO-S12 (Wang et al. 2022): MoCo v3 with temporal positives, or MAE, on a ViT. CPU-sized defaults."""

    modality: Literal["s2", "s1"] = option("s2", doc="which sensor's time series to pretrain on")
    single_date: Literal["augment", "skip"] = option(
        "augment", doc="a location seen once: two augmented crops of its one date, or leave it out"
    )
    objective: Literal["moco", "mae"] = option("moco", doc="MoCo v3 with seasonal positives, or MAE")
    backbone: Literal["vit", "resnet50"] = option(
        "vit", doc="ViT (patch, dim, depth, heads below) or ResNet-50 (SSL4EO-S12's other backbone; MoCo only)"
    )
    patch: int = option(8, doc="patch side (SSL4EO ViT-S/16 on 224²: 16)")
    dim: int = option(192, doc="ViT width (ViT-S: 384)")
    depth: int = option(6, doc="ViT layers (ViT-S: 12)")
    heads: int = option(3, doc="attention heads (ViT-S: 6)")
    proj_dim: int = option(256, doc="MoCo v3 projector output (paper: 256)")
    hidden_dim: int = option(1024, doc="MoCo v3 projector/predictor hidden width (paper: 4096)")
    temperature: float = option(0.2, doc="MoCo v3 temperature (ViT: 0.2)")
    momentum: float = option(0.99, doc="initial EMA momentum of the key encoder, raised to 1 on a cosine (paper: 0.99)")
    min_scale: float = option(0.5, doc="smallest random-resized-crop area")
    jitter: float = option(0.2, doc="brightness/contrast jitter")
    shared_geometry: bool = option(
        False, doc="both dates get the same crop and flips (pixel-aligned positives); reference: independent"
    )
    mask_ratio: float = option(0.75, doc="MAE: share of patches masked")
    decoder_dim: int = option(128, doc="MAE decoder width")
    decoder_depth: int = option(2, doc="MAE decoder layers")
    decoder_heads: int = option(4, doc="MAE decoder heads")
    pooling: Literal["cls", "mean"] = option("cls", doc="embedding: class token (MoCo v3's read-out) or mean patch")
    positions: Literal["auto", "interleaved", "mocov3", "mae"] = option(
        "auto",
        doc="sin-cos table layout: auto = the objective's reference (moco: MoCo v3's vits.py L53-68; mae: MAE's "
        "pos_embed.py), which published and torchgeo weights need; or interleaved (rows|columns, sin/cos mixed)",
    )
    norm_eps: float = option(1e-6, doc="every LayerNorm's epsilon (timm's ViT, which MoCo v3 and MAE build on: 1e-6)")
    init: Literal["reference", "pytorch"] = option(
        "reference", doc="ViT initialisation: the objective's reference (MoCo v3's vits.py, MAE's) or PyTorch's"
    )
    stop_grad_conv1: bool = option(
        True, doc="MoCo: freeze the random patch projection (MoCo v3 §4.2; SSL4EO-S12's ViT script passes it)"
    )
    decoder_cls: bool = option(False, doc="MAE: the class token also passes the decoder (models_mae.py L160-185)")
    unbiased_patch_var: bool = option(
        False, doc="MAE: target normalisation with torch.var's n - 1, as MAE's forward_loss (models_mae.py L206)"
    )

    def validate(self) -> None:
        super().validate()
        if self.backbone == "resnet50" and self.objective != "moco":
            raise ConfigError("backbone resnet50 trains with objective moco only (MAE needs the ViT's patches)")
        if self.backbone == "resnet50" and self.chip < 32:
            raise ConfigError(f"backbone resnet50 downsamples by 32: chip {self.chip} must be at least 32")


REFERENCE_CODE_SSL4EO: dict[str, dict[str, Any]] = {
    "moco": {},
    "mae": {"decoder_cls": True, "unbiased_patch_var": True},
}
"""The ``ssl4eo`` settings, per objective, that reproduce zhu-xlab/SSL4EO-S12's MoCo v3 and MAE code (itself
facebookresearch/moco-v3 and mae with 13 input channels; ``benchmarks/_equiv_ssl4eo.py``)."""


_FORMATS = (
    "per-band GeoTIFF folders: SSL4EO-S12 (s1/s2a/s2c/<id>/<product>/B1.tif), BigEarthNet v1/v2, Major-TOM cells",
    "multi-band GeoTIFF chips (EuroSAT MS, Hydro): bands by description, else by count (2, 12 or 13)",
    "S1 GRD as VV/VH in dB; S2 as reflectance x 10000; 20 m and 60 m bands resampled to 10 m",
)


def resolved_positions(cfg: SSL4EOConfig) -> str:
    """``positions`` with ``auto`` resolved: MoCo v3's table for ``moco``, MAE's for ``mae``."""
    if cfg.positions != "auto":
        return cfg.positions
    return "mae" if cfg.objective == "mae" else "mocov3"


class _RSPlugin(ModalityPlugin):
    extra = "remote-sensing"
    requires = ("rasterio", "matplotlib")
    data_formats = _FORMATS
    commands = (
        PluginCommand(
            "stats",
            "ssl_domains_rs.stats:stats_command",
            "per-band mean/std of your data: --data DIR --out stats.json [--s2-level L2A] (then --set stats=...)",
        ),
    )

    input_spec = {
        "s2_level": "Sentinel-2 product level (L2A or L1C)",
        "channels": "bands in channel order (CROMA: radar and optical inputs)",
        "band_statistics": "per-band [mean, std] the normalisation uses",
        "normalisation": "the per-band formula applied with those statistics",
        "units": "the units the statistics are in",
        "chip": "chip side in pixels",
        "ground_sample_distance_m": "pixel size in metres",
    }

    def presets(self) -> dict[str, Path]:
        # CROMA and SSL4EO share configs/: each keeps the files named after it
        return {k: v for k, v in super().presets().items() if k.startswith(f"{self.name}-")}

    mode: ClassVar[str]  # the data module's view pairing: "s1s2" (CROMA) or "temporal" (SSL4EO)

    def datamodule(self, cfg: RSDataConfig, data: Path) -> SSLDataModule:
        from .data import RSDataModule

        return RSDataModule(Path(data), cfg, mode=self.mode)

    def make_example_data(self, root: Path) -> Path:
        from .synthetic import write_example_pairs

        return write_example_pairs(Path(root))

    def visualize(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: RSDataConfig, out_dir: Path, device: torch.device
    ) -> list[Path]:
        from .figures import plot_reconstruction

        return plot_reconstruction(model, datamodule, out_dir, device)

    def evaluate(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: RSDataConfig, device: torch.device
    ) -> dict[str, float] | None:
        from .evaluation import evaluate_retrieval

        return evaluate_retrieval(model, datamodule, device)


class CROMAPlugin(_RSPlugin):
    """CROMA: contrastive radar-optical masked autoencoders."""

    name = "croma"
    config = CROMAConfig
    mode = "s1s2"
    description = "CROMA radar-optical pretraining (S1 + S2): 2D-ALiBi ViTs, X-ALiBi joint encoder, InfoNCE + MAE"
    paper = (
        "Fuller, Millard, Green. CROMA: Remote Sensing Representations with Contrastive Radar-Optical Masked "
        "Autoencoders. NeurIPS 2023. https://arxiv.org/abs/2311.00566"
    )
    batch_keys = {"radar": "float32", "optical": "float32", "id": "int64", "split": "int64", "location": "int64"}
    run_defaults = {
        "optim": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.05, "warmup_steps": 0.05, "gradient_clip_val": 1.0},
        "trainer": {"max_epochs": 100},
    }
    weight_formats = (
        WeightFormat(
            "croma",
            "CROMA's released CROMA_base.pt / CROMA_large.pt (antofuller/CROMA, as use_croma.py reads them: "
            "s1_encoder, s1_GAP_FFN, s2_encoder, s2_GAP_FFN, joint_encoder), sizes from the shapes, 16 heads",
            reader="ssl_domains_rs.weights_croma:read_released",
            writer="ssl_domains_rs.weights_croma_out:write_released",
            example_overrides={"croma": {"heads": 16, "qkv_bias": False, "shared_cross_norm": True}},
        ),
        WeightFormat(
            "torchgeo",
            "the state dict of torchgeo's torchgeo.models.croma.CROMA (croma_base / croma_large: s1_encoder.*, ..., "
            "attn_bias), both modalities",
            reader="ssl_domains_rs.weights_croma:read_torchgeo",
            writer="ssl_domains_rs.weights_croma_out:write_torchgeo",
            example_overrides={"croma": {"heads": 16, "qkv_bias": False, "shared_cross_norm": True}},
        ),
    )

    def example_overrides(self) -> dict[str, Any]:
        return {
            "croma": {
                "chip": 16,
                "dim": 32,
                "depth": 2,
                "heads": 2,
                "decoder_dim": 32,
                "decoder_heads": 2,
                "batch_size": 4,
            }
        }

    def model(self, cfg: CROMAConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import CROMA

        return CROMA(len(datamodule.s2_bands), 2, cfg.patch, cfg.dim, cfg.depth, cfg.heads, cfg.decoder_dim,
                     cfg.decoder_depth, cfg.decoder_heads, cfg.embed_modality, qkv_bias=cfg.qkv_bias,
                     shared_cross_norm=cfg.shared_cross_norm, joint_self_bias=cfg.joint_self_bias,
                     alibi_slopes=cfg.alibi_slopes, decoder_positions=cfg.decoder_positions)  # fmt: skip

    def objective(self, cfg: CROMAConfig) -> Objective:
        from .objective import CROMAObjective

        return CROMAObjective(cfg.mask_ratio, cfg.mae_weight, cfg.flips, cfg.unbiased_patch_var, cfg.detach_keys)


class SSL4EOPlugin(_RSPlugin):
    """SSL4EO-S12: MoCo v3 with seasonal/temporal positives, or MAE, on Sentinel chips."""

    name = "ssl4eo"
    config = SSL4EOConfig
    mode = "temporal"
    description = "SSL4EO-S12 pretraining: MoCo v3 with multi-date positives of one location (or MAE) on S2/S1"
    paper = (
        "Wang, Braham, Xiong, Liu, Albrecht, Zhu. SSL4EO-S12: A Large-Scale Multi-Modal, Multi-Temporal Dataset for "
        "Self-Supervised Learning in Earth Observation. IEEE GRSM 2023. https://arxiv.org/abs/2211.07044"
    )
    batch_keys = {"view1": "float32", "view2": "float32", "id": "int64", "split": "int64", "location": "int64"}
    run_defaults = {
        "optim": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.1, "warmup_steps": 0.05, "gradient_clip_val": 1.0},
        "trainer": {"max_epochs": 100},
    }
    weight_formats = (
        WeightFormat(
            "ssl4eo-moco",
            "SSL4EO-S12's MoCo v3 ViT checkpoint (zhu-xlab/SSL4EO-S12, e.g. B13_vits16_moco_0099_ckpt.pth: "
            "module.base_encoder / momentum_encoder / predictor), sizes and bands from the shapes",
            reader="ssl_domains_rs.weights_ssl4eo:read_moco",
            writer="ssl_domains_rs.weights_ssl4eo:write_moco",
        ),
        WeightFormat(
            "ssl4eo-mae",
            "SSL4EO-S12's MAE ViT checkpoint (facebookresearch/mae's save_model: 'model' = MaskedAutoencoderViT)",
            reader="ssl_domains_rs.weights_ssl4eo:read_mae",
            writer="ssl_domains_rs.weights_ssl4eo:write_mae",
            example_overrides={"ssl4eo": {"objective": "mae", "decoder_cls": True}},
        ),
        WeightFormat(
            "timm",
            "a timm VisionTransformer state dict with a fixed sin-cos pos_embed (torchgeo's ViTSmall16_Weights."
            "SENTINEL2_ALL_MOCO / _MAE): the encoder alone",
            reader="ssl_domains_rs.weights_ssl4eo:read_timm",
            writer="ssl_domains_rs.weights_ssl4eo:write_timm",
        ),
    )

    def example_overrides(self) -> dict[str, Any]:
        return {
            "ssl4eo": {"chip": 16, "dim": 32, "depth": 2, "heads": 2, "proj_dim": 16, "hidden_dim": 32, "batch_size": 4}
        }

    def model(self, cfg: SSL4EOConfig, datamodule: SSLDataModule) -> SSLModel:
        from torch import nn

        from .model import SSL4EOModel

        if cfg.backbone == "resnet50":
            from .resnet import SSL4EOResNetModel

            return SSL4EOResNetModel(len(datamodule.bands), cfg.proj_dim, cfg.hidden_dim, cfg.momentum)
        init = "pytorch" if cfg.init == "pytorch" else ("mae" if cfg.objective == "mae" else "mocov3")
        model = SSL4EOModel(
            len(datamodule.bands), cfg.patch, cfg.dim, cfg.depth, cfg.heads, cfg.proj_dim, cfg.hidden_dim,
            cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.pooling,
            key_momentum=cfg.momentum if cfg.objective == "moco" else None, positions=resolved_positions(cfg),
            eps=cfg.norm_eps, init=init,
            stop_grad_conv1=cfg.stop_grad_conv1 and cfg.objective == "moco",
        )  # fmt: skip
        # The heads of the other objective stay in the state dict (one layout for both variants) but are frozen:
        # a trainable parameter without a gradient stalls DDP's reducer and costs optimiser state.
        unused = model.decoder if cfg.objective == "moco" else nn.ModuleList([model.projector, model.predictor])
        unused.requires_grad_(False)
        return model

    def objective(self, cfg: SSL4EOConfig) -> Objective:
        from .objective import MAEObjective, MoCoObjective

        if cfg.objective == "mae":
            return MAEObjective(cfg.mask_ratio, cfg.decoder_cls, cfg.unbiased_patch_var)
        return MoCoObjective(cfg.temperature, cfg.min_scale, cfg.jitter, cfg.shared_geometry)
