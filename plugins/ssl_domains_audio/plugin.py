"""TERA and SSAST plugins: metadata and typed configs. Imports no torch (``ssl-domains list`` reads this module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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

FSDD_NAMES = r"(?P<label>[^_]+)_(?P<speaker>[^_]+)_\d+\.(?:wav|flac|ogg)"


@dataclass
class AudioDataConfig:
    """Settings of the shared audio data module."""

    label_regex: str = option(
        FSDD_NAMES,
        doc="regex on file names with the group (?P<label>), (?P<speaker>) or both; default: FSDD's d_speaker_n.wav",
    )
    layout: Literal["auto", "names", "speaker_chapter"] = option(
        "auto",
        doc="speakers from folders: auto finds LibriSpeech's speaker/chapter/speaker-chapter-n.flac; speaker_chapter"
        " takes every clip's folder two levels up (Libri-Light); names: only label_regex",
    )
    test_speakers: list[str] = option(
        default_factory=list, doc="speakers held out of pretraining and used as the probe's test split"
    )
    unlabelled: list[str] = option(
        default_factory=list,
        doc="folders (or manifests) of extra clips for pretraining only, labels ignored, never embedded or probed"
        " (e.g. from `ssl-domains run tera synthesize`)",
    )
    min_seconds: float = option(0.1, doc="shortest clip accepted (shorter clips are an error naming the file)")
    f_max: float | None = option(
        None, doc="highest mel band edge in Hz (null: 8 kHz, the Nyquist rate of 16 kHz; 4000 for 8 kHz recordings)"
    )
    crop_frames: int = option(100, doc="training crop length in 10 ms frames (reference TERA: 1500)")
    max_frames: int = option(1024, doc="longest input at embed time (centre crop beyond it; SSAST: position table)")
    batch_size: int = option(32, doc="clips per batch (per training batch unless max_seconds is set)")
    max_seconds: float | None = option(
        None,
        doc="training batches of variable size, capped at this many seconds of padded audio per GPU (lhotse's"
        " max_duration; e.g. 400 for 1500-frame crops); null: batch_size clips",
    )
    num_workers: int = option(0, doc="data-loading workers (0 is fine while the features are kept in memory)")
    cache: Literal["auto", "memory", "none"] = option(
        "auto",
        doc="keep every clip's features in memory (computed at setup), or none (decoded in the workers); auto keeps"
        " them when they fit 25% of RAM ($SSL_DOMAINS_MEMORY_BUDGET)",
    )
    feature_extraction: Literal["auto", "loader", "device"] = option(
        "auto",
        doc="where training features are computed: in the loader workers, or on the training device (the workers"
        " only decode and crop; the batch's features are computed there in one call, as s3prl's online"
        " preprocessing does); auto: on the device unless the features are kept in memory",
    )
    index_cache: bool = option(
        True, doc="cache the clip list and lengths on disk ($SSL_DOMAINS_CACHE): a second run reads no headers"
    )
    vtlp: float = option(
        0.0,
        doc="vocal tract length perturbation of training crops: warp factor drawn from [1-vtlp, 1+vtlp] (0: off;"
        " Jaitly & Hinton 2013 use 0.1)",
    )
    eval_cs: list[float] = option(
        default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0], doc="probe C grid (leave-one-speaker-out selection)"
    )


def _check_heads(dim: int, heads: int, section: str) -> None:
    if heads < 1 or dim % heads:
        raise ConfigError(f"{section}.dim {dim} is not divisible by {section}.heads {heads}")


def _check_batches(cfg: AudioDataConfig, section: str) -> None:
    if cfg.feature_extraction == "device" and cfg.cache == "memory":
        raise ConfigError(
            f"{section}.feature_extraction device computes the features of each training crop on the GPU, so there"
            f" is nothing to keep in memory; set {section}.cache to auto or none, or feature_extraction to loader"
        )
    if cfg.max_seconds is not None and cfg.max_seconds * 100 < cfg.crop_frames:  # 100 frames a second
        raise ConfigError(
            f"{section}.max_seconds {cfg.max_seconds} holds {int(cfg.max_seconds * 100)} frames, fewer than one crop"
            f" of crop_frames {cfg.crop_frames}; raise max_seconds to at least {cfg.crop_frames / 100:g} or lower"
            " crop_frames"
        )


@dataclass
class TERAConfig(AudioDataConfig):
    """TERA (Liu et al. 2021). Defaults are a CPU-sized model; ``--config base`` is the paper's 3 × 768."""

    num_mel_bins: int = option(80, doc="log-mel bands (s3prl: 80)")
    cmvn: Literal["utterance", "dataset"] = option(
        "utterance", doc="normalise each band per clip (s3prl) or with training-set statistics (short clips)"
    )
    stats_max_clips: int = option(5000, doc="training clips read to compute dataset statistics")
    dim: int = option(256, doc="transformer width (paper base: 768)")
    depth: int = option(3, doc="transformer layers (paper: 3)")
    heads: int = option(4, doc="attention heads (paper: 12)")
    ff_dim: int = option(1024, doc="feed-forward width (paper: 3072)")
    dropout: float = option(0.1, doc="dropout (reference: 0.1)")
    layer_norm_eps: float = option(1e-12, doc="LayerNorm epsilon (reference: 1e-12)")
    time_mask_ratio: float = option(0.15, doc="share of frames altered in time (paper: 15%)")
    time_mask_block: int = option(7, doc="consecutive frames per time block (paper: 7)")
    freq_mask_max: float = option(0.2, doc="largest frequency block, as a share of bins (paper: 20%)")
    noise_prob: float = option(0.0, doc="probability of magnitude noise per batch (logMelBase-T-F-M: 0.15)")
    embedding: Literal["last", "layer_mean"] = option(
        "last", doc="embed: last layer, or the mean of the input representation and every layer (s3prl's states)"
    )
    pooling: Literal["mean", "mean_std"] = option("mean", doc="pool a clip's frames: mean, or mean and std")

    def validate(self) -> None:
        """Raise :class:`ConfigError` on sizes the transformer cannot take."""
        _check_heads(self.dim, self.heads, "tera")
        _check_batches(self, "tera")


@dataclass
class SSASTConfig(AudioDataConfig):
    """SSAST (Gong et al. 2022). Defaults are the tiny model on 128-bin fbank; ``--config small|base``."""

    num_mel_bins: int = option(128, doc="Kaldi fbank bins (paper: 128)")
    mode: Literal["patch", "frame"] = option("patch", doc="16×16 patches (cluster masking) or 128×2 frames (random)")
    dim: int = option(192, doc="ViT width (tiny 192, small 384, base 768)")
    depth: int = option(12, doc="ViT layers (paper: 12)")
    heads: int = option(3, doc="attention heads (tiny 3, small 6, base 12)")
    ff_dim: int = option(768, doc="feed-forward width (4 × dim in DeiT)")
    dropout: float = option(0.0, doc="dropout")
    mask_ratio: float = option(0.78, doc="share of a clip's patches masked (paper: 400 of 512)")
    mse_weight: float = option(10.0, doc="λ in nce + λ·mse (paper: 10)")
    nce_softmax: Literal["paper", "reference"] = option(
        "paper", doc="InfoNCE softmax over targets (Eq. 1) or predictions"
    )
    forward_passes: Literal[1, 2] = option(1, doc="1: both heads on one masked pass; 2: the reference's two passes")
    norm_mean: float | None = option(None, doc="fbank mean (null: computed from the training clips)")
    norm_std: float | None = option(None, doc="fbank std (null: computed from the training clips)")
    stats_max_clips: int = option(5000, doc="training clips read to compute the statistics")
    embedding: Literal["last", "layer_mean"] = option("last", doc="embed: last layer, or the mean of all layers")
    pooling: Literal["mean", "mean_std"] = option("mean", doc="pool a clip's frames: mean, or mean and std")
    position_crop: Literal["left", "centre"] = option(
        "left",
        doc="position-table columns a shorter clip gets: the first ones (the reference's pretraining) or the"
        " centre ones (the reference's fine-tuning; set by `ssl-domains import --format ssast`)",
    )

    def patch(self) -> tuple[int, int]:
        """The patch shape (frequency bins, frames)."""
        return (16, 16) if self.mode == "patch" else (self.num_mel_bins, 2)

    def validate(self) -> None:
        """Raise :class:`ConfigError` when the patches do not tile the spectrogram, or the width the heads."""
        _check_heads(self.dim, self.heads, "ssast")
        _check_batches(self, "ssast")
        bins, frames = self.patch()
        if self.num_mel_bins % bins or self.max_frames % frames:
            raise ConfigError(
                f"ssast.mode {self.mode!r} cuts {bins} x {frames} patches, which must tile num_mel_bins "
                f"{self.num_mel_bins} and max_frames {self.max_frames}; pick multiples of {bins} and {frames}"
            )


_AUDIO_FORMATS = (
    "a folder of WAV, FLAC, OGG, Opus or MP3 files, searched recursively (decoded with soundfile, any rate,"
    " downmixed); LibriSpeech's speaker/chapter folders give the speakers",
    "one audio file, or a manifest CSV with a 'path' column (optional 'label' and 'speaker')",
    "a Kaldi wav.scp (or a data folder holding one), with speakers from utt2spk beside it",
)
_BATCH_KEYS = {"features": "float32", "length": "int64", "label": "int64", "split": "int64", "id": "int64"}


_SYNTHESIZE = PluginCommand(
    "synthesize", "ssl_domains_audio.tts:main", "write unlabelled espeak-ng speech (many voices) for pretraining"
)


class _AudioPlugin(ModalityPlugin):
    extra = "audio"
    commands = (_SYNTHESIZE,)
    requires = ("torchaudio", "soundfile", "matplotlib")
    data_formats = _AUDIO_FORMATS
    batch_keys = _BATCH_KEYS
    input_spec = {
        "sample_rate": "Hz the audio is resampled to",
        "channels": "channels are averaged to one",
        "features": "the spectral features and how they are computed",
        "mel_bins": "mel bands per frame",
        "window": "analysis window and hop",
        "f_max": "highest mel filter frequency in Hz (null: Nyquist)",
        "normalisation": "how features are normalised, with the training-set statistics where fitted",
    }

    def presets(self) -> dict[str, Path]:
        # TERA and SSAST share configs/: each keeps the files named after it
        return {k: v for k, v in super().presets().items() if k.startswith(f"{self.name}-")}

    def make_example_data(self, root: Path) -> Path:
        from .synthetic import write_example_clips

        return write_example_clips(Path(root))

    def evaluate(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: AudioDataConfig, device: torch.device
    ) -> dict[str, float] | None:
        from .evaluation import evaluate_clips

        return evaluate_clips(model, datamodule, cfg, device)


class TERAPlugin(_AudioPlugin):
    """TERA: reconstruction of time-, frequency- and magnitude-altered log-mel frames."""

    name = "tera"
    config = TERAConfig
    weight_formats = (
        WeightFormat(
            "s3prl",
            "s3prl's TERA / Mockingjay states-*.ckpt (Transformer, SpecHead, Upstream_Config)",
            reader="ssl_domains_audio.weights_tera:read",
            writer="ssl_domains_audio.weights_tera:write",
        ),
    )
    description = "TERA masked acoustic modelling (time/frequency/magnitude alteration) on log-mel speech features"
    paper = (
        "Liu, Li, Lee. TERA: Self-Supervised Learning of Transformer Encoder Representation for Speech. "
        "IEEE/ACM TASLP 29, 2021. https://arxiv.org/abs/2007.06028"
    )
    # s3prl: AdamW (Lamb, adam=True), lr 2e-4, linear warm-up over 7%, gradient clipping at 5, no decay on biases
    # and LayerNorms
    run_defaults = {
        "optim": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.01, "warmup_steps": 0.07,
                  "gradient_clip_val": 5.0, "no_decay_on_bias_and_norm": True},
        "trainer": {"max_epochs": 100},
    }  # fmt: skip

    def example_overrides(self) -> dict[str, Any]:
        return {
            "tera": {"dim": 32, "depth": 1, "heads": 2, "ff_dim": 64, "batch_size": 8, "dropout": 0.0},
            "trainer": {"max_epochs": 2},
        }  # fmt: skip

    def datamodule(self, cfg: TERAConfig, data: Path) -> SSLDataModule:
        from .data import AudioDataModule

        return AudioDataModule(Path(data), cfg, kind="logmel" if cfg.cmvn == "utterance" else "logmel_global")

    def model(self, cfg: TERAConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import TERAModel

        return TERAModel(
            cfg.num_mel_bins, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, ff_dim=cfg.ff_dim, dropout=cfg.dropout,
            max_frames=cfg.max_frames, embedding=cfg.embedding, pooling=cfg.pooling, eps=cfg.layer_norm_eps,
        )  # fmt: skip

    def objective(self, cfg: TERAConfig) -> Objective:
        from .objective import TERAObjective

        return TERAObjective(
            time_mask_ratio=cfg.time_mask_ratio, time_mask_block=cfg.time_mask_block, freq_mask_max=cfg.freq_mask_max,
            noise_prob=cfg.noise_prob,
        )  # fmt: skip

    def visualize(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: TERAConfig, out_dir: Path, device: torch.device
    ) -> list[Path]:
        from .figures import plot_tera

        return [plot_tera(model, datamodule, self.objective(cfg), out_dir / "tera_reconstruction.png", device)]


class SSASTPlugin(_AudioPlugin):
    """SSAST: joint discriminative and generative masked spectrogram patch modelling."""

    name = "ssast"
    config = SSASTConfig
    description = "SSAST masked spectrogram patch modelling (InfoNCE + MSE) on Kaldi fbank, ViT with SDPA"
    paper = (
        "Gong, Lai, Chung, Glass. SSAST: Self-Supervised Audio Spectrogram Transformer. AAAI 2022. "
        "https://arxiv.org/abs/2110.09784"
    )
    commands = (
        PluginCommand("stats", "ssl_domains_audio.stats:main", "print the fbank mean/std of a folder, as config lines"),
        _SYNTHESIZE,
    )
    weight_formats = (
        WeightFormat(
            "ssast",
            "SSAST's released .pth (YuanGongND/ssast: a `module.`-prefixed DataParallel state dict of the pretraining"
            " ASTModel over a timm DeiT; patch or frame, tiny/small/base, inferred from the shapes)",
            reader="ssl_domains_audio.weights_ssast:read",
            writer="ssl_domains_audio.weights_ssast:write",
            # the writer holds the released architectures only: DeiT-tiny's 12 x 192
            example_overrides={"ssast": {"dim": 192, "heads": 3, "depth": 12, "ff_dim": 768}},
        ),
    )
    # reference: Adam, lr 1e-4 (tiny: 5e-4), betas (0.95, 0.999), weight decay 5e-7, 1k-step warm-up
    run_defaults = {
        "optim": {"name": "adam", "lr": 5e-4, "betas": [0.95, 0.999], "weight_decay": 5e-7, "warmup_steps": 0.05},
        "trainer": {"max_epochs": 100},
    }

    def example_overrides(self) -> dict[str, Any]:
        return {
            "ssast": {"dim": 32, "depth": 1, "heads": 2, "ff_dim": 64, "batch_size": 8, "max_frames": 256},
            "trainer": {"max_epochs": 2},
        }  # fmt: skip

    def datamodule(self, cfg: SSASTConfig, data: Path) -> SSLDataModule:
        from .data import AudioDataModule

        return AudioDataModule(Path(data), cfg, kind="fbank", pad_multiple=cfg.patch()[1])

    def model(self, cfg: SSASTConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import SSASTModel

        return SSASTModel(
            cfg.num_mel_bins, patch=cfg.patch(), dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, ff_dim=cfg.ff_dim,
            dropout=cfg.dropout, max_frames=cfg.max_frames, embedding=cfg.embedding,
            pooling=cfg.pooling, position_crop=cfg.position_crop,
        )  # fmt: skip

    def objective(self, cfg: SSASTConfig) -> Objective:
        from .objective import SSASTObjective

        return SSASTObjective(
            mask_ratio=cfg.mask_ratio, cluster=cfg.mode == "patch", mse_weight=cfg.mse_weight,
            nce_softmax=cfg.nce_softmax, forward_passes=cfg.forward_passes,
        )  # fmt: skip

    def visualize(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: SSASTConfig, out_dir: Path, device: torch.device
    ) -> list[Path]:
        from .figures import plot_ssast

        return [plot_ssast(model, datamodule, self.objective(cfg), out_dir / "ssast_reconstruction.png", device)]
