"""ssl-domains: self-supervised pretraining on scientific data.

The public API is small and importable without torch: the plugin contract and the config helpers. The trainer,
evaluation and the conformance kit live in submodules that import torch when used.
"""

from .config import OptimConfig, TrainerConfig, option
from .errors import CheckpointWriteError, ConfigError, DataError, NonFiniteLossError, PluginError, Preempted, UserError
from .plugin import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, ModalityPlugin, PluginCommand

__version__ = "0.1.0"

__all__ = [
    "SPLIT_TEST",
    "SPLIT_TRAIN",
    "SPLIT_VAL",
    "CheckpointWriteError",
    "ConfigError",
    "DataError",
    "ModalityPlugin",
    "NonFiniteLossError",
    "OptimConfig",
    "PluginCommand",
    "PluginError",
    "Preempted",
    "TrainerConfig",
    "UserError",
    "__version__",
    "option",
]
