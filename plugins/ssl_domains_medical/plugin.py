"""Alice and contrastive3d plugins: metadata and typed configs. Imports no torch (``ssl-domains list`` reads this)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ssl_domains import ConfigError, ModalityPlugin, Objective, SSLDataModule, SSLModel, WeightFormat, option

if TYPE_CHECKING:  # annotations only: this module must not import torch
    import torch


@dataclass
class MedicalConfig:
    """Settings of the shared MONAI data module (``ssl_domains_medical/data.py``) and of the backbone."""

    intensity: Literal["mr", "ct"] = option(
        "mr", doc="intensity scaling to [0, 1]: 'ct' = fixed HU window (ct_window), 'mr' = per-volume percentiles"
    )
    ct_window: tuple[float, float] = option(
        (-125.0, 225.0), doc="HU window for intensity: ct (Alice: -125..225; MONAI ViT recipe -57..164)"
    )
    mr_percentiles: tuple[float, float] = option((0.5, 99.5), doc="percentiles mapped to 0 and 1 for intensity: mr")
    orientation: str = option("RAS", doc="Orientationd axcodes every volume is reoriented to")
    spacing: tuple[float, float, float] = option((2.0, 2.0, 2.0), doc="voxel size in mm after Spacingd")
    foreground_threshold: float = option(0.05, doc="CropForegroundd keeps voxels above this (after scaling)")
    foreground_margin: int = option(2, doc="voxels kept around the foreground box")
    roi: int = option(64, doc="crop side in voxels (a multiple of 32; SwinUNETR needs >= 64 to train)")
    pad: bool = option(True, doc="zero-pad volumes smaller than the ROI (false: such a volume is an error)")
    volume_dtype: Literal["float32", "float16"] = option(
        "float32",
        doc="dtype the preprocessed volumes are kept in, cached or not: float16 halves the cache and the bytes a "
        "crop reads, within 2^-11 of each [0, 1] value (bf16 autocast rounds the input to 2^-8); crops reach the "
        "network as float32",
    )
    samples_per_volume: int = option(8, doc="training crops per volume per epoch")
    cache: Literal["auto", "memory", "disk", "none"] = option(
        "auto",
        doc="preprocessed volumes: CacheDataset (memory), PersistentDataset (disk), none, or auto: memory when they "
        "fit the memory budget ($SSL_DOMAINS_MEMORY_BUDGET, default 25% of RAM), else disk",
    )
    cache_dir: str = option(
        "", doc="PersistentDataset folder (empty: $SSL_DOMAINS_CACHE/medical/<preprocessing key>, kept across runs)"
    )
    index_cache: bool = option(
        True, doc="cache the volumes' sizes and foreground points on disk, keyed by the files and the preprocessing"
    )
    intensity_aug: bool = option(
        False, doc="random bias field, gamma and noise on the network's input views (targets stay clean)"
    )
    batch_size: int = option(
        2, doc="volumes drawn (contrastive3d; crops_per_volume crops each) or crop pairs (Alice) per batch"
    )
    correspondence: Literal["box", "world"] = option(
        "box", doc="how the positive's point in another volume is found: foreground-box affine, or world coordinates"
    )
    num_workers: int = option(0, doc="data-loading worker processes")
    backbone: Literal["vit", "swin"] = option(
        "vit", doc="MONAI UNETR (ViT, patch 16) or SwinUNETR (Swin transformer, patch 2) encoder-decoder"
    )
    feature_size: int = option(8, doc="UNETR/SwinUNETR feature_size (decoder width; Swin: a multiple of 12)")
    hidden_size: int = option(384, doc="ViT width (UNETR default 768)")
    num_heads: int = option(6, doc="ViT attention heads (UNETR default 12)")

    def validate(self) -> None:
        """Raise :class:`ConfigError` on sizes the backbones cannot take."""
        if self.roi % 32:
            raise ConfigError(f"roi {self.roi} must be a multiple of 32 (UNETR patches of 16, SwinUNETR's 5 stages)")
        if self.backbone == "swin" and (self.feature_size % 12 or self.roi < 64):
            raise ConfigError("backbone swin needs feature_size a multiple of 12 and roi >= 64 (MONAI SwinUNETR)")
        if self.backbone == "vit" and self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")


@dataclass
class Contrastive3DConfig(MedicalConfig):
    """contrastive3d: the MONAI self-supervised recipes (ViT autoencoder views, Swin UNETR SSL losses)."""

    # hole sizes are the recipe's voxels at a 96^3 crop; the data module scales them by roi / 96
    inpaint_holes: int = option(6, doc="RandCoarseDropoutd in-painting holes (recipe: 6)")
    inpaint_size: int = option(5, doc="in-painting hole side, minimum (recipe: 5)")
    inpaint_max_size: int = option(32, doc="in-painting hole side, maximum (recipe: 32)")
    outpaint_holes: int = option(6, doc="RandCoarseDropoutd out-painting kept boxes (recipe: 6)")
    outpaint_size: int = option(20, doc="out-painting box side, minimum (recipe: 20)")
    outpaint_max_size: int = option(64, doc="out-painting box side, maximum (recipe: 64)")
    shuffle_prob: float = option(0.8, doc="RandCoarseShuffled probability (recipe: 0.8)")
    shuffle_holes: int = option(10, doc="RandCoarseShuffled holes (recipe: 10)")
    shuffle_size: int = option(8, doc="RandCoarseShuffled hole side (recipe: 8)")
    corruptions_on: Literal["device", "loader"] = option(
        "device",
        doc="where the views are corrupted: on the training device, batched after the transfer (the same MONAI"
        " draws, transforms.corrupt_batch; the workers only crop), or by MONAI's transforms in the loader workers",
    )
    positives: Literal["views", "corresponding"] = option(
        "views",
        doc="NT-Xent positives: two corrupted copies of one crop (MONAI, Tang), or corrupted crops at corresponding"
        " points of two different volumes (Chaitanya et al. 2020; the point pairs of alice, see correspondence)",
    )
    crops_per_volume: int = option(
        1,
        doc="crops of one volume per drawn volume (MONAI recipe: RandSpatialCropSamplesd, 2); a batch holds"
        " batch_size x crops_per_volume crops, and crops of one volume are each other's NT-Xent negatives",
    )
    proj_dim: int = option(512, doc="contrastive projection width (Swin UNETR SSL: 512)")
    temperature: float = option(0.5, doc="NT-Xent temperature (Swin UNETR SSL: 0.5)")
    rotation: bool = option(True, doc="predict a random 0/90/180/270 degree rotation of each view (Swin UNETR SSL)")
    recon_weight: float = option(1.0, doc="weight of the L1 reconstruction (Swin UNETR SSL: 1)")
    contrast_weight: float = option(1.0, doc="weight of NT-Xent (Swin UNETR SSL: 1)")
    rotation_weight: float = option(1.0, doc="weight of the rotation cross-entropy (Swin UNETR SSL: 1)")
    decoder: Literal["auto", "unetr", "autoenc", "bottleneck"] = option(
        "auto",
        doc="reconstruction path. auto: the references' decoders without skips (vit: autoenc, MONAI's ViTAutoEnc "
        "of the ViT tutorial, two transposed convolutions from the final tokens; swin: bottleneck, Tang et al.'s "
        "from the 1/32 stage); unetr: the UNETR/SwinUNETR decoder with skips, through which in-painted regions can "
        "be copied",
    )
    loss_form: Literal["tang", "tutorial"] = option(
        "tang",
        doc="tang: weighted L1 + NT-Xent on projections (+ rotation); tutorial: the MONAI ViT notebook's"
        " L1(recon of view 1) + NT-Xent(flattened reconstructions) x L1, no projector (needs rotation: false)",
    )

    def validate(self) -> None:
        """Also reject options that exclude each other."""
        super().validate()
        if self.decoder == "autoenc" and self.backbone != "vit":
            raise ConfigError("decoder: autoenc is MONAI's ViTAutoEnc; it needs backbone: vit")
        if self.decoder == "bottleneck" and self.backbone != "swin":
            raise ConfigError("decoder: bottleneck is Swin UNETR's (Tang et al.); it needs backbone: swin")
        if self.loss_form == "tutorial" and self.rotation:
            raise ConfigError("loss_form: tutorial is the MONAI ViT recipe, which has no rotation; set rotation: false")
        if self.positives == "corresponding" and self.crops_per_volume > 1:
            raise ConfigError(
                "crops_per_volume > 1 draws several crops of one volume, positives: corresponding one crop per volume"
                " of a pair; set crops_per_volume: 1 with it"
            )


@dataclass
class AliceConfig(MedicalConfig):
    """Alice (Jiang et al., ICCV 2023): cross-volume anatomical positives, DINO-style teacher-student, masked
    reconstruction and conditional (cross-attention) alignment. Defaults are CPU-sized; see ``alice-paper``."""

    intensity_aug: bool = option(
        True, doc="the student sees crops with a random bias field, gamma and noise (the reference's unused data_aug)"
    )
    mask_ratio: float = option(
        0.75, doc="share of (y, z) cells hidden from the student as columns along x (reference: 0.75)"
    )
    mask_patch: int = option(16, doc="side of a mask cell in voxels (reference: 16)")
    mask_axis: Literal["x", "z"] = option(
        "x", doc="axis the mask columns run along (x); z: the reference's (utils.MaskGenerator repeats along the last)"
    )
    out_dim: int = option(512, doc="DINO head output (prototype) count (reference: 512)")
    head_hidden: int = option(512, doc="DINO head hidden width (reference: 2048)")
    head_bottleneck: int = option(256, doc="DINO head bottleneck (reference: 256)")
    head_batch_norm: bool = option(
        True, doc="BatchNorm1d in the DINO heads' MLPs (DINO's use_bn_in_head; the reference: off, see the docs)"
    )
    align_dim: int = option(256, doc="conditional-alignment width = patch prototypes (reference: 512)")
    align_heads: int = option(8, doc="conditional-alignment heads (reference: 8)")
    align_ff: int = option(1024, doc="conditional-alignment feed-forward width (reference: 2048)")
    student_temp: float = option(0.1, doc="student softmax temperature (reference: 0.1)")
    teacher_temp: float = option(0.01, doc="teacher temperature after warm-up (reference: 0.01)")
    teacher_temp_start: float = option(0.008, doc="teacher temperature at the start (reference: 0.008)")
    teacher_temp_warmup: float = option(0.1, doc="share of training over which it rises (reference: 30 of 1000 epochs)")
    teacher_temp_epochs: int = option(
        0, doc="0: the teacher temperature rises with every step; N > 0: the reference's per-epoch table over N epochs"
    )
    centering: Literal["ema", "sinkhorn"] = option(
        "ema", doc="teacher centring: DINO's EMA centre (reference) or Sinkhorn-Knopp within the batch (DINOv2/iBOT)"
    )
    sinkhorn_iterations: int = option(3, doc="Sinkhorn-Knopp iterations (DINOv2: 3)")
    center_momentum: float = option(0.9, doc="DINO centring momentum (reference: 0.9; unused by sinkhorn)")
    momentum: float = option(0.996, doc="teacher EMA momentum at the start, raised to 1 on a cosine (reference)")
    momentum_ref_steps: int = option(
        3000,
        doc="scale the starting momentum to the run: 1 - (1 - momentum) * N / steps, within [momentum_floor,"
        " momentum], so a run shorter than N steps (the reference's 1000 epochs x 3 iterations) moves its teacher as"
        " far from its init as the reference's; 0: the reference's schedule unscaled",
    )
    momentum_floor: float = option(0.9, doc="lowest starting momentum momentum_ref_steps may give (BYOL: >= 0.9)")
    momentum_at_step_start: bool = option(
        False, doc="EMA momentum of the step's own index, as the reference (default: of the step count after it)"
    )
    patch_head: Literal["linear", "dino"] = option(
        "linear",
        doc="patch tokens into CASA: linear projections (ours); dino: through the [CLS] head's MLP and patch"
        " prototypes first (the reference, models/head.py:179-196)",
    )
    drop_path: float | None = option(
        None,
        doc="student stochastic depth (the teacher has none). null: 0.1 with backbone swin (SwinUNETR's"
        " dropout_path_rate), none with vit: MONAI's UNETR ViT has no stochastic depth, so vit takes only 0",
    )
    cls_weight: float = option(1.0, doc="lambda_1, cross-volume [CLS] loss (reference: 1)")
    patch_weight: float = option(1.0, doc="lambda_2, aligned patch loss (reference: 1)")
    recon_weight: float = option(10.0, doc="lambda_3, masked-image reconstruction MSE (reference: 10)")

    def student_drop_path(self) -> float:
        """``drop_path`` with null resolved: 0.1 for ``swin`` (the reference's ``--drop_path``), 0 for ``vit``."""
        if self.drop_path is None:
            return 0.1 if self.backbone == "swin" else 0.0
        return self.drop_path

    def validate(self) -> None:
        super().validate()
        if self.drop_path is not None and not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"alice.drop_path {self.drop_path} must be in [0, 1)")
        if self.backbone == "vit" and self.drop_path:
            raise ConfigError(
                "alice.drop_path needs backbone swin: MONAI's UNETR ViT blocks have no stochastic depth (their "
                "dropout_rate is plain dropout); set drop_path: 0 or null"
            )
        if self.momentum_ref_steps < 0 or not 0.0 <= self.momentum_floor <= 1.0:
            raise ConfigError("alice.momentum_ref_steps must be >= 0 and alice.momentum_floor in [0, 1]")
        patch = 16 if self.backbone == "vit" else 2
        if self.mask_patch % patch or self.roi % self.mask_patch:
            raise ConfigError(
                f"mask_patch {self.mask_patch} must be a multiple of the {self.backbone} patch ({patch}) and divide "
                f"roi {self.roi}"
            )
        if self.align_heads < 1 or self.align_dim % self.align_heads:
            raise ConfigError(
                f"alice.align_dim {self.align_dim} is not divisible by alice.align_heads {self.align_heads}"
            )


_FORMATS = (
    "NIfTI volumes (.nii, .nii.gz) or DICOM series folders: one path, a folder (searched recursively) or a glob",
    "a manifest CSV with an 'image' column (and optionally 'label'), paths relative to the CSV",
    "CT (intensity: ct, HU window) or MR (intensity: mr, percentiles); reoriented to RAS and resampled (Spacingd)",
)


class _MedicalPlugin(ModalityPlugin):
    extra = "medical"
    requires = ("monai", "nibabel", "einops", "pydicom", "scipy", "matplotlib")
    data_formats = _FORMATS

    input_spec = {
        "channels": "image channels (one: CT or one MR contrast)",
        "orientation": "axis codes every volume is reoriented to (Orientationd)",
        "spacing_mm": "voxel size after resampling (Spacingd, bilinear)",
        "intensity": "intensity scaling to [0, 1]",
        "foreground_crop": "the crop to the body (CropForegroundd)",
        "roi": "crop side the network sees, in voxels",
        "stored_as": "dtype the preprocessed volumes are kept in (volume_dtype)",
        "embedding": "how a whole volume is embedded",
    }

    def presets(self) -> dict[str, Path]:
        # alice and contrastive3d share configs/: each keeps the files named after it
        return {k: v for k, v in super().presets().items() if k.startswith(f"{self.name}-")}

    mode: ClassVar[str]  # the data module's crops: "views" (contrastive3d) or "pairs" (Alice)

    def datamodule(self, cfg: MedicalConfig, data: Path) -> SSLDataModule:
        from .data import MedicalDataModule

        mode = "corresponding_views" if getattr(cfg, "positives", "views") == "corresponding" else self.mode
        return MedicalDataModule(Path(data), cfg, mode=mode)

    def make_example_data(self, root: Path) -> Path:
        from .synthetic import write_example_volumes

        return write_example_volumes(Path(root))

    def visualize(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: MedicalConfig, out_dir: Path, device: torch.device
    ) -> list[Path]:
        from .figures import plot_reconstruction

        return plot_reconstruction(model, datamodule, cfg, self.mode, out_dir, device)

    def evaluate(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: MedicalConfig, device: torch.device
    ) -> dict[str, float] | None:
        from .evaluation import evaluate_landmarks

        return evaluate_landmarks(model, datamodule, cfg, device, lambda: self.model(cfg, datamodule))


class Contrastive3DPlugin(_MedicalPlugin):
    """contrastive3d: two corrupted views of a crop, L1 reconstruction + NT-Xent (+ rotation prediction)."""

    name = "contrastive3d"
    config = Contrastive3DConfig
    mode = "views"
    description = "3D contrastive + reconstruction pretraining (MONAI recipes): in/out-painting views, NT-Xent, L1"
    paper = (
        "Tang, Yang, Nath, Tang, Myronenko, Landman, Hatamizadeh, Xu. Self-Supervised Pre-Training of Swin "
        "Transformers for 3D Medical Image Analysis. CVPR 2022. https://arxiv.org/abs/2111.14791 ; MONAI tutorials, "
        "self_supervised_pretraining/vit_unetr_ssl"
    )
    batch_keys = {"image": "float32", "view1": "float32", "view2": "float32", "id": "int64", "volume": "int64"}
    run_defaults = {
        "optim": {"name": "adamw", "lr": 4e-4, "weight_decay": 0.1, "warmup_steps": 0.05, "gradient_clip_val": 1.0},
        "trainer": {"max_epochs": 100},
    }
    weight_formats = (
        WeightFormat(
            "swinvit",
            "Swin UNETR's self-supervised encoder (Tang et al. 2022, model_swinvit.pt, as MONAI's SwinUNETR.load_from "
            "reads it; or a SwinUNETR/Pretrain checkpoint): backbone swin, the decoder and heads fresh",
            reader="ssl_domains_medical.weights_swinvit:read",
        ),
        WeightFormat(
            "monai-bundle",
            "a MONAI bundle's models/model.pt whose network is a 1-channel UNETR or SwinUNETR (e.g. "
            "swin_unetr_btcv_segmentation): encoder and decoder (decoder: unetr); a segmentation head starts fresh",
            reader="ssl_domains_medical.weights_monai:read",
        ),
    )

    def example_overrides(self) -> dict[str, Any]:
        return {
            "contrastive3d": {"roi": 32, "hidden_size": 48, "num_heads": 2, "feature_size": 4, "proj_dim": 16,
                              "samples_per_volume": 2, "batch_size": 2}
        }  # fmt: skip

    def model(self, cfg: Contrastive3DConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import Contrastive3DModel, VolumeNet

        return Contrastive3DModel(VolumeNet.from_config(cfg), cfg.proj_dim, cfg.rotation, cfg.loss_form == "tang")

    def objective(self, cfg: Contrastive3DConfig) -> Objective:
        from .objective import Contrastive3DObjective

        return Contrastive3DObjective(
            cfg.temperature, cfg.rotation, cfg.recon_weight, cfg.contrast_weight, cfg.rotation_weight, cfg.loss_form
        )


class AlicePlugin(_MedicalPlugin):
    """Alice: anatomically corresponding crops of different volumes, DINO teacher-student, MIM, alignment."""

    name = "alice"
    config = AliceConfig
    mode = "pairs"
    description = "Alice: cross-volume anatomical positives, EMA teacher (DINO), masked reconstruction, CASA alignment"
    paper = (
        "Jiang, Miao, Cai, Yan, Lu, Yang, Zhang, Ding, Wang, Ji, Qiao, Jiang, Zhang, Zhou. Anatomical Invariance "
        "Modeling and Semantic Alignment for Self-supervised Learning in 3D Medical Image Analysis. ICCV 2023. "
        "https://arxiv.org/abs/2302.05615"
    )
    batch_keys = {"query": "float32", "anchor": "float32", "query_view": "float32", "anchor_view": "float32",
                  "id": "int64", "volume": "int64", "partner": "int64"}  # fmt: skip
    run_defaults = {
        "optim": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.04, "warmup_steps": 0.05, "gradient_clip_val": 3.0},
        "trainer": {"max_epochs": 100},
    }
    weight_formats = (
        WeightFormat(
            "swinvit",
            "Swin UNETR's self-supervised encoder (model_swinvit.pt, as for contrastive3d) into the student and the "
            "teacher's starting copy; the decoder, heads, CASA and DINO state fresh",
            reader="ssl_domains_medical.weights_swinvit:read_alice",
        ),
        WeightFormat(
            "monai-bundle",
            "a MONAI bundle's 1-channel UNETR / SwinUNETR (as for contrastive3d) into the student and the teacher's "
            "starting copy; heads, CASA and DINO state fresh",
            reader="ssl_domains_medical.weights_monai:read_alice",
        ),
    )

    def example_overrides(self) -> dict[str, Any]:
        return {
            "alice": {"roi": 32, "hidden_size": 48, "num_heads": 2, "feature_size": 4, "out_dim": 32, "head_hidden": 32,
                      "head_bottleneck": 16, "align_dim": 32, "align_heads": 2, "align_ff": 64, "samples_per_volume": 2,
                      "batch_size": 2}
        }  # fmt: skip

    def model(self, cfg: AliceConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import AliceModel, VolumeNet

        return AliceModel(
            VolumeNet.from_config(cfg, drop_path=cfg.student_drop_path()), cfg.out_dim, cfg.head_hidden,
            cfg.head_bottleneck, cfg.align_dim, cfg.align_heads, cfg.align_ff, cfg.momentum, cfg.center_momentum,
            cfg.head_batch_norm, cfg.momentum_at_step_start, cfg.momentum_ref_steps, cfg.momentum_floor,
            cfg.patch_head,
        )  # fmt: skip

    def objective(self, cfg: AliceConfig) -> Objective:
        from .objective import AliceObjective

        return AliceObjective(cfg)
