"""ssl-domains: self-supervised pretraining on scientific data.

The public API is small and importable without torch: the plugin contract and the config helpers. The names
that need torch (``load_encoder``, ``Encoder``, ``load_run``, ``resolve_config``, ``atomic_write``, ``save_weights``,
``FittedDataModule``) are imported on first use; the trainer, evaluation and the conformance kit live in
submodules.
"""

from typing import Any

from .config import OptimConfig, TrainerConfig, option
from .errors import CheckpointWriteError, ConfigError, DataError, NonFiniteLossError, PluginError, Preempted, UserError
from .plugin import (
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VAL,
    ModalityPlugin,
    Objective,
    PluginCommand,
    SSLDataModule,
    SSLModel,
    WeightFormat,
)

__version__ = "0.1.0"

__all__ = [
    "SPLIT_TEST",
    "SPLIT_TRAIN",
    "SPLIT_VAL",
    "CheckpointWriteError",
    "ConfigError",
    "DataError",
    "Encoder",
    "FittedDataModule",
    "ImportedWeights",
    "ModalityPlugin",
    "NonFiniteLossError",
    "Objective",
    "OptimConfig",
    "PluginCommand",
    "PluginError",
    "Preempted",
    "SSLDataModule",
    "SSLModel",
    "TrainerConfig",
    "UserError",
    "WeightFormat",
    "__version__",
    "atomic_write",
    "load_encoder",
    "load_run",
    "option",
    "resolve_config",
    "save_weights",
]

# name -> module: imported when first used, so that `import ssl_domains` does not import torch
_LAZY = {
    "FittedDataModule": "ssl_domains.datamodule",
    "ImportedWeights": "ssl_domains.transfer",
    "atomic_write": "ssl_domains.checkpoint",
    "Encoder": "ssl_domains.encoder",
    "load_encoder": "ssl_domains.encoder",
    "load_run": "ssl_domains.run",
    "resolve_config": "ssl_domains.run",
    "save_weights": "ssl_domains.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssl_domains' has no attribute {name!r}")
