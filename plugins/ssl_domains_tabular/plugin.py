"""T-JEPA plugin: metadata and typed config. Imports no torch (``ssl-domains list`` reads this module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ssl_domains import ConfigError, ModalityPlugin, Objective, SSLDataModule, SSLModel, option
from ssl_domains.plugin import WeightFormat

if TYPE_CHECKING:  # annotations only: this module must not import torch
    import torch


REFERENCE_ARCHITECTURE = {
    "block_norm": "post",
    "positions": "sincos",
    "predictor_head": "encoder_head",
    "predictor_positions": "halves",
}
"""Settings without which our weights do not compute in the reference's modules (the ``t-jepa`` export needs them)."""


@dataclass
class TJEPAConfig:
    """T-JEPA settings (Thimonier et al. 2024). Model defaults are a CPU-sized version of the reference launch
    script (dim 64, 16 + 16 layers); ``--config paper`` restores the reference sizes."""

    # data
    target: str | None = option(None, doc="target column, excluded from the features (used only for evaluation)")
    task: Literal["auto", "classification", "regression"] = option("auto", doc="what the target is")
    categorical: list[str] = option(default_factory=list, doc="columns to treat as categorical (overrides dtype)")
    numerical: list[str] = option(default_factory=list, doc="columns to treat as numeric (overrides dtype)")
    drop: list[str] = option(default_factory=list, doc="columns to ignore (ids, leaks)")
    missing: Literal["error", "impute"] = option(
        "error", doc="missing values: error (default), or impute (training median; a '<missing>' category)"
    )
    numeric_scaling: Literal["quantile", "standard", "minmax"] = option(
        "quantile", doc="numeric scaler fitted on the training split (reference: minmax)"
    )
    sep: str | None = option(None, doc="CSV delimiter (null: ',' or tab for .tsv)")
    na_values: list[str] = option(default_factory=list, doc="extra strings read as missing, e.g. ['?']")
    val_fraction: float = option(0.2, doc="share of the training table held out for validation (model selection)")
    test_fraction: float = option(0.2, doc="share held out for testing when no test table is given")
    split_seed: int = option(0, doc="seed of the validation/test split (fixed across pretraining seeds)")
    storage: Literal["auto", "memory", "stream"] = option(
        "auto",
        doc="memory: the table read into pandas; stream (for tables larger than memory): statistics fitted in one "
        "streaming pass, rows encoded into memory-mapped arrays under $SSL_DOMAINS_CACHE; auto: stream when the "
        "table in pandas would exceed the memory budget",
    )
    batch_size: int = option(512, doc="rows per batch (reference: 512)")
    num_workers: int = option(0, doc="data-loading worker processes (batches are tensor slices: 0 is fine)")
    # model
    dim: int = option(64, doc="token width H (reference: 64)")
    depth: int = option(4, doc="encoder layers (reference: 16)")
    heads: int = option(2, doc="attention heads (reference: 2)")
    ff_dim: int = option(128, doc="feed-forward width (reference: 64)")
    dropout: float = option(0.0, doc="dropout in the transformers (reference: 0.002)")
    num_reg_tokens: int = option(2, doc="[REG] tokens prepended to every sequence (reference default: 1)")
    predictor_dim: int = option(32, doc="predictor width (reference: 16)")
    predictor_depth: int = option(4, doc="predictor layers (reference: 16)")
    predictor_heads: int = option(4, doc="predictor attention heads (reference: 4)")
    predictor_ff_dim: int | None = option(
        None, doc="predictor feed-forward width (null: predictor_dim; reference pred_dim_feedforward: 256)"
    )
    # the reference's choices (jose-melo/t-jepa @ 98dda99), for the equivalence check and imported weights;
    # docs/plugins/tjepa.md lists each with its lines in both code bases
    block_norm: Literal["pre", "post"] = option(
        "pre", doc="transformer blocks: pre-norm, or post-norm as the reference (src/tjepa_transformer.py:583)"
    )
    activation: Literal["gelu", "relu"] = option(
        "gelu", doc="feed-forward activation (reference default model_act_func/pred_activation: relu)"
    )
    positions: Literal["learned", "sincos"] = option(
        "learned",
        doc="learned feature-index embeddings, or the reference's sinusoidal table on [REG] + features, base 100 "
        "(src/utils/train_utils.py:22)",
    )
    predictor_head: Literal["norm", "encoder_head"] = option(
        "norm",
        doc="predictor output: LayerNorm -> Linear, or the reference's encoder head (LayerNorm, Linear, LayerNorm) "
        "before them (src/predictors.py:326)",
    )
    predictor_positions: Literal["interleaved", "halves"] = option(
        "interleaved", doc="predictor sin-cos table: interleaved, or sin|cos halves as the reference (MAE's)"
    )
    mask_indexing: Literal["paper", "reference"] = option(
        "paper",
        doc="paper: context/targets are features, [REG] always in the context; reference: indices 0..D-1 into "
        "[REG] + features, the reference's off-by-one (src/mask.py:139)",
    )
    expect_numeric: int | None = option(
        None, doc="set by `ssl-domains import`: numeric columns the imported weights need (checked on the table)"
    )
    expect_categories: list[int] | None = option(
        None,
        doc="set by `ssl-domains import`: categories of each categorical column the imported weights need, in "
        "token order, without the unknown index (checked on the table)",
    )
    # masking and teacher
    context_share: tuple[float, float] = option((0.136, 0.368), doc="range of the context's share of features")
    target_share: tuple[float, float] = option((0.156, 0.622), doc="range of each target set's share of features")
    num_targets: int = option(4, doc="target sets per sample (reference: 4)")
    ema_start: float = option(0.996, doc="target-encoder EMA momentum at the start (rises linearly)")
    ema_end: float = option(1.0, doc="target-encoder EMA momentum at the end")
    # downstream
    embedding: Literal["flatten", "mean", "reg"] = option(
        "flatten", doc="embed: all target-encoder tokens flattened (paper), their mean, or the [REG] tokens"
    )
    eval_seeds: int = option(3, doc="seeds per downstream head in evaluate")
    head_epochs: int = option(200, doc="maximum epochs of a downstream head (early stopping on validation)")
    head_patience: int = option(16, doc="epochs without validation improvement before a head stops (reference)")

    def validate(self) -> None:
        """Cross-field checks."""
        if self.positions == "sincos" and self.dim % 2:
            raise ConfigError(f"tjepa.positions=sincos needs an even tjepa.dim, got {self.dim}")
        if self.predictor_positions == "halves" and self.predictor_dim % 2:
            raise ConfigError(f"tjepa.predictor_positions=halves needs an even predictor_dim, got {self.predictor_dim}")


class TJEPAPlugin(ModalityPlugin[TJEPAConfig]):
    """T-JEPA: joint-embedding predictive pretraining for tables, without augmentations."""

    name = "tjepa"
    config = TJEPAConfig
    description = "T-JEPA joint-embedding predictive pretraining on CSV/Parquet tables (numeric + categorical)"
    paper = (
        "Thimonier, De Melo Costa, Popineau, Rimmel, Doan. T-JEPA: augmentation-free self-supervised learning "
        "for tabular data. arXiv:2410.05016, 2024 (ICLR 2025). https://arxiv.org/abs/2410.05016"
    )
    extra = "tabular"
    requires = ("pandas", "pyarrow", "matplotlib")
    data_formats = (
        "a CSV, TSV or Parquet file with a header row (pandas / pyarrow)",
        "a folder with train.csv|parquet and optional val.* and test.* (the official test split)",
    )
    weight_formats = (
        WeightFormat(
            name="t-jepa",
            help="a checkpoint saved by jose-melo/t-jepa (EarlyStopCounter.cache_model: epoch_N.pth with "
            "context_encoder, target_encoder, predictor), or one of its Encoder state dicts; the table must have "
            "the checkpoint's numeric columns and categories (docs/plugins/tjepa.md)",
            reader="ssl_domains_tabular.weights_tjepa:read",
            writer="ssl_domains_tabular.weights_tjepa:write",
            example_overrides={"tjepa": REFERENCE_ARCHITECTURE},  # the writer needs the reference's architecture
        ),
    )
    batch_keys = {"numeric": "float32", "categorical": "int64", "label": "int64", "split": "int64", "id": "int64"}
    input_spec = {
        "numeric": "numeric columns, in token order (the scaler's statistics are in data_state.pt)",
        "categorical": "categorical columns, in token order, with their vocabulary sizes",
        "numeric_scaling": "how numeric columns are scaled",
        "missing": "how missing values are handled",
        "unseen_categories": "what a category unseen in training becomes",
        "target": "the target column (excluded from the features)",
        "task": "classification or regression",
    }
    # Reference: AdamW, cosine schedule 0 -> 3.66e-4 -> 0, warm-up 10 of 300 epochs (0.033), no weight decay.
    run_defaults = {
        "optim": {"name": "adamw", "lr": 3.66e-4, "weight_decay": 0.0, "warmup_steps": 0.033, "schedule": "cosine"},
        "trainer": {"max_epochs": 100},
    }

    def example_overrides(self) -> dict[str, Any]:
        return {
            "tjepa": {"target": "label", "dim": 16, "depth": 1, "predictor_dim": 8, "predictor_depth": 1,
                      "batch_size": 64, "eval_seeds": 1, "head_epochs": 5},
            "trainer": {"max_epochs": 2},
        }  # fmt: skip

    def datamodule(self, cfg: TJEPAConfig, data: Path) -> SSLDataModule:
        from .data import TableDataModule

        return TableDataModule(Path(data), cfg)

    def model(self, cfg: TJEPAConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import TJEPAModel
        from .weights_tjepa import check_table

        check_table(cfg, datamodule)
        return TJEPAModel(
            len(datamodule.fitted["numeric"]),
            datamodule.cardinalities,
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            ff_dim=cfg.ff_dim,
            dropout=cfg.dropout,
            num_reg_tokens=cfg.num_reg_tokens,
            predictor_dim=cfg.predictor_dim,
            predictor_depth=cfg.predictor_depth,
            predictor_heads=cfg.predictor_heads,
            ema=(cfg.ema_start, cfg.ema_end),
            embedding=cfg.embedding,
            predictor_ff_dim=cfg.predictor_ff_dim,
            norm=cfg.block_norm,
            activation=cfg.activation,
            positions=cfg.positions,
            predictor_head=cfg.predictor_head,
            predictor_positions=cfg.predictor_positions,
        )

    def objective(self, cfg: TJEPAConfig) -> Objective:
        from .objective import TJEPAObjective

        return TJEPAObjective(
            context_share=cfg.context_share, target_share=cfg.target_share, num_targets=cfg.num_targets,
            mask_indexing=cfg.mask_indexing,
        )  # fmt: skip

    def make_example_data(self, root: Path) -> Path:
        from .evaluation import write_example_table

        return write_example_table(Path(root))

    def evaluate(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: TJEPAConfig, device: torch.device
    ) -> dict[str, float] | None:
        from .evaluation import evaluate_tjepa

        return evaluate_tjepa(model, datamodule, cfg, device)

    def visualize(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: TJEPAConfig, out_dir: Path, device: torch.device
    ) -> list[Path]:
        from .figures import plot_feature_errors

        out = out_dir / "feature_prediction_error.png"
        return [plot_feature_errors(model, datamodule, self.objective(cfg), out, device)]
