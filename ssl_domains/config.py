"""Typed configs: dataclasses whose fields carry a doc string, read from YAML and ``--set key=value``.

Every config in ssl-domains is a plain dataclass. Fields are declared with :func:`option` so that
``ssl-domains info`` can print each field's default and documentation. :func:`from_mapping` validates a mapping
(parsed YAML) against the dataclass, key by key and type by type, and raises :class:`ConfigError` naming the
offending key. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import ConfigError

__all__ = [
    "MonitorConfig",
    "OptimConfig",
    "TrainerConfig",
    "describe_fields",
    "from_mapping",
    "merge",
    "option",
    "parse_overrides",
    "to_mapping",
    "validate",
]

T = TypeVar("T")


def option(default: Any = MISSING, *, doc: str, default_factory: Any = MISSING) -> Any:
    """Declare a config field with a default and a one-line doc shown by ``ssl-domains info``."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("give either default or default_factory")
    if isinstance(default, (list, dict, set)):
        raise ValueError("use default_factory for mutable defaults")
    return field(default=default, default_factory=default_factory, metadata={"doc": doc})


@dataclass
class TrainerConfig:
    """Loop, hardware and logging settings, passed to ``lightning.Trainer``."""

    max_epochs: int = option(100, doc="number of passes over the training data")
    max_steps: int = option(-1, doc="stop after this many optimiser steps (-1: no limit)")
    max_minutes: float | None = option(None, doc="stop after this much wall time (null: no limit)")
    precision: str = option("32-true", doc="Lightning precision: 32-true, bf16-mixed, 16-mixed, bf16-true")
    accelerator: str = option("auto", doc="cpu, gpu, mps or auto")
    devices: int | str = option("auto", doc="number of devices per node, or auto")
    strategy: str = option("auto", doc="auto, ddp, ddp_spawn, fsdp (Lightning strategies)")
    num_nodes: int = option(1, doc="number of machines for multi-node DDP")
    sync_batchnorm: bool = option(False, doc="under DDP, compute BatchNorm statistics over all ranks")
    seed: int = option(0, doc="global seed: data order, masking, initialisation")
    log_every_n_steps: int = option(10, doc="log metrics (and check the loss is finite) every N steps")
    accumulate_grad_batches: int = option(1, doc="gradient accumulation")
    progress_bar: bool = option(True, doc="show a progress bar")
    loggers: list[Literal["csv", "tensorboard", "wandb", "mlflow"]] = option(
        default_factory=lambda: ["csv", "tensorboard"],
        doc="experiment trackers, all writing inside the run: csv, tensorboard, wandb (offline unless"
        " WANDB_MODE=online), mlflow (file store unless MLFLOW_TRACKING_URI); wandb/mlflow need [tracking]",
    )
    compile: bool = option(False, doc="torch.compile the training step (objective, model and loss)")
    deterministic: bool = option(False, doc="ask torch for deterministic kernels (slower on GPU)")
    limit_train_batches: int | float = option(1.0, doc="fraction (float) or number (int) of batches")
    check_val_every_n_epoch: int = option(1, doc="run the validation loop every N epochs, if there is one")
    checkpoint_every_n_epochs: int = option(1, doc="write last.ckpt every N epochs (resume restarts from it)")
    checkpoint_every_n_steps: int = option(
        0, doc="also write a step checkpoint every N optimiser steps, mid-epoch included (0: off)"
    )
    checkpoint_every_n_minutes: float = option(
        30.0, doc="also write a step checkpoint when this much wall time passed since the last one (0: off)"
    )
    keep_checkpoints: int = option(2, doc="step checkpoints kept in checkpoints/ (the newest N; last.ckpt is extra)")
    on_data_error: Literal["stop", "skip"] = option(
        "stop",
        doc="an unreadable item met while training: stop (checkpoint, name the file, exit) or skip it (counted"
        " in the logs as train/skipped_items)",
    )

    def validate(self) -> None:
        """Cross-field checks (the core calls this on every resolved config)."""
        for name in ("checkpoint_every_n_epochs", "keep_checkpoints", "log_every_n_steps", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every_n_steps < 0 or self.checkpoint_every_n_minutes < 0:
            raise ConfigError("trainer.checkpoint_every_n_steps and checkpoint_every_n_minutes must be >= 0 (0: off)")
        if len(set(self.loggers)) != len(self.loggers):
            raise ConfigError(f"trainer.loggers names a tracker twice: {self.loggers}")
        if self.max_epochs < 1 and self.max_epochs != -1:
            raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1 with max_steps), got {self.max_epochs}")
        if self.max_epochs == -1 and self.max_steps < 1 and self.max_minutes is None:
            raise ConfigError("trainer.max_epochs -1 trains forever: set trainer.max_steps or trainer.max_minutes")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warmup, then cosine or constant)."""

    name: Literal["adamw", "adam", "sgd"] = option(
        "adamw", doc="adamw (decoupled decay), adam (L2 decay, as many reference codes use) or sgd"
    )
    lr: float = option(1e-3, doc="peak learning rate")
    weight_decay: float = option(0.05, doc="weight decay")
    betas: tuple[float, float] = option((0.9, 0.999), doc="Adam betas")
    momentum: float = option(0.9, doc="SGD momentum")
    no_decay_on_bias_and_norm: bool = option(False, doc="exclude 1-D parameters (biases, norms) from decay")
    schedule: Literal["cosine", "constant"] = option("cosine", doc="shape after warmup")
    warmup_steps: int | float = option(
        0, doc="linear warmup length: steps (int) or a fraction of all steps (float < 1)"
    )
    min_lr_ratio: float = option(0.0, doc="cosine floor as a fraction of lr")
    gradient_clip_val: float | None = option(None, doc="clip the gradient norm to this value (null: off)")

    def validate(self) -> None:
        """Cross-field checks (the core calls this on every resolved config)."""
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if isinstance(self.warmup_steps, float) and not 0 <= self.warmup_steps < 1:
            raise ConfigError(f"optim.warmup_steps as a float is a fraction in [0, 1), got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass
class MonitorConfig:
    """The live representation monitor (:mod:`ssl_domains.monitor`): RankMe, alpha-ReQ, NESum, stable rank and
    kNN accuracy of a fixed sample of the predict view, between training steps, with a warning on collapse."""

    every_n_steps: int = option(500, doc="monitor every N optimiser steps (0: off)")
    max_items: int = option(4096, doc="size of the fixed sample of the predict view that is embedded")
    min_effective_rank: float = option(
        1.5, doc="warn of collapse when the centred embeddings' effective rank falls below this (1: one direction)"
    )
    knn_k: int = option(
        20, doc="neighbours of the kNN accuracy (half the sample as the bank), where the data has labels"
    )
    max_overhead: float = option(
        0.02, doc="the monitor's share of training wall time: the interval stretches to stay under it"
    )

    def validate(self) -> None:
        """Cross-field checks (the core calls this on every resolved config)."""
        if self.every_n_steps < 0 or self.max_items < 2 or self.knn_k < 1:
            raise ConfigError("monitor.every_n_steps must be >= 0, monitor.max_items >= 2, monitor.knn_k >= 1")
        if not 0 < self.max_overhead <= 1:
            raise ConfigError(f"monitor.max_overhead is a fraction in (0, 1], got {self.max_overhead}")


# ---------------------------------------------------------------------------------------------------- helpers


def to_mapping(obj: Any) -> Any:
    """A dataclass (recursively) as plain YAML-safe Python: dicts, lists, scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_mapping(v) for k, v in obj.items()}
    return obj


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``; mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "graphmae.mask_rate=0.5"]`` as a nested mapping; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (for example optim.lr=1e-3), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc.problem})") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with another --set for {part!r}")
        node[parts[-1]] = value
    return out


def describe_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """Yield ``(dotted_name, type_name, default, doc)`` for every field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from describe_fields(tp, prefix=f"{name}.")
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "<required>"
        yield name, _type_name(tp), to_mapping(default), f.metadata.get("doc", "")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking every key and value; missing keys keep defaults."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping of keys to values, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), list(fields), n=1)
        suggestion = f"; did you mean {_join(where, hint[0])!r}?" if hint else ""
        raise ConfigError(
            f"unknown config key {_join(where, key)!r}{suggestion} Valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], _join(where, name))
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None
    validate(obj)
    return obj


def validate(cfg: Any) -> None:
    """Run a config's cross-field checks: its ``validate()`` method, if it defines one.

    The contract: ``validate()`` raises :class:`ConfigError` naming the keys and the fix, and never changes the
    config (a derived value is a property, so that what ``config.yaml`` holds is what the run used). The core calls
    it on every config it builds, before any data are read or any file is written.
    """
    check = getattr(cfg, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:  # a plain check written with ValueError still reads as config input
            raise ConfigError(str(exc)) from None


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple, dict):
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it converted where YAML is looser than Python."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(repr(a) for a in args)}, got {_show(value)}")
    if origin in (Union, types.UnionType):
        errors = []
        # None first, then exact types before looser ones (an int is accepted where float is allowed).
        for arg in sorted(args, key=lambda a: (a is not type(None), a is float)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {_show(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where} must be null, got {_show(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it obviously is.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {_show(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=False)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {_show(value)}")
        val_tp = args[1] if args else Any
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where} must be {_type_name(tp)}, got {_show(value)}")
