"""Published weights in and out: ``ssl-domains import`` and ``ssl-domains export``.

A plugin lists the checkpoint formats of its method in ``weight_formats`` (:class:`ssl_domains.plugin.WeightFormat`).
A format's reader maps a file onto the plugin's model (:class:`ImportedWeights`: a config layer with the sizes it
implies, and a state dict in the model's key layout); the core then does what is the same for every plugin:

1. resolve the config (core defaults < plugin defaults < the reader's layer < ``--config`` < ``--set``);
2. set up the datamodule on ``--data`` (what it fits, such as normalisation statistics, is fitted there) and
   build the model;
3. load the state dict strictly: every key of the model must come from the file or be declared ``fresh`` by the
   reader, nothing may be left over, every shape must match; all problems are reported in one error;
4. only then write the run folder (``config.yaml``, ``model.safetensors``, ``data_state.pt``, ``input_spec.yaml``
   and ``imported.yaml``: the source file, its SHA-256, the format and the reader's notes), which ``embed``,
   ``evaluate`` and ``train --init-from`` accept. A failure leaves no folder behind.

Files are read with ``torch.load(weights_only=True)`` (no code runs from a pickle) or as safetensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import UserError
from .plugin import ModalityPlugin, WeightFormat

__all__ = ["IMPORTED_FILE", "ImportedWeights", "export_weights", "import_weights", "load_strict", "read_checkpoint"]

IMPORTED_FILE = "imported.yaml"


@dataclass(frozen=True)
class ImportedWeights:
    """What a format's reader returns.

    ``config`` is a run-config layer (``{"<plugin>": {"dim": 768, ...}}``) with the sizes and preprocessing
    the weights imply; ``state_dict`` the weights in the plugin model's key layout; ``fresh`` prefixes of the
    model's keys that the file does not hold (left at their initialisation, and reported); ``notes`` lines for
    the user, saved in ``imported.yaml``.
    """

    config: Mapping[str, Any]
    state_dict: Mapping[str, torch.Tensor]
    fresh: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The mapping saved in ``path`` (``.safetensors``, or a torch file read with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "weights are loaded with weights_only=True: re-save plain tensors (model.state_dict()) if it holds objects"
        ) from None
    if not isinstance(state, Mapping):
        raise UserError(f"{path} holds a {type(state).__name__}, not a mapping of names to tensors")
    return dict(state)


def load_strict(model: torch.nn.Module, weights: ImportedWeights, source: Path) -> list[str]:
    """Load ``weights`` into ``model``; raise one :class:`UserError` listing every missing, unexpected or
    mis-shaped key; return the model keys left at their initialisation (under ``weights.fresh``)."""
    ours = model.state_dict()
    given = dict(weights.state_dict)
    unexpected = sorted(set(given) - set(ours))
    fresh = sorted(k for k in ours if k not in given and k.startswith(tuple(weights.fresh)) and weights.fresh)
    missing = sorted(k for k in ours if k not in given and k not in fresh)
    shapes = [
        f"{k}: file {tuple(given[k].shape)}, model {tuple(ours[k].shape)}"
        for k in sorted(set(given) & set(ours))
        if tuple(given[k].shape) != tuple(ours[k].shape)
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
        if items
    ]
    if problems:
        raise UserError(
            f"{source} does not fit the model its format implies: {'; '.join(problems)}. Pass --set for sizes the "
            "file cannot tell (see `ssl-domains info PLUGIN`), or check that --format is right"
        )
    model.load_state_dict({**ours, **{k: v.to(ours[k].dtype) for k, v in given.items()}})
    return fresh


def _format(plugin: ModalityPlugin, name: str | None, role: str) -> WeightFormat:
    usable = [f for f in plugin.weight_formats if getattr(f, role) is not None]
    if not usable:
        verb = "imports" if role == "reader" else "exports"
        raise UserError(f"plugin {plugin.name} {verb} no published weight format")
    if name is None:
        if len(usable) > 1:
            raise UserError(f"pass --format: {plugin.name} has {', '.join(f.name for f in usable)}")
        return usable[0]
    for fmt in usable:
        if fmt.name == name:
            return fmt
    raise UserError(f"{plugin.name} has no weight format {name!r} to {role[:-2]} (formats: "
                    f"{', '.join(f.name for f in usable)})")  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_weights(
    plugin: ModalityPlugin,
    source: Path,
    data: str | Path | None,
    output: Path,
    fmt: str | None = None,
    layers: Sequence[dict[str, Any]] = (),
    overrides: Sequence[str] = (),
) -> Path:
    """Turn the published checkpoint ``source`` into the run folder ``output`` (see the module docstring)."""
    from .checkpoint import atomic_write, save_data_state, save_weights
    from .encoder import write_model_card
    from .run import CONFIG_FILE, DATA_STATE_FILE, INPUT_SPEC_FILE, WEIGHTS_FILE, resolve_config
    from .rundir import CreatedRun, refuse_existing

    source, output = Path(source), Path(output)
    weight_format = _format(plugin, fmt, "reader")
    if output.is_dir() and any(output.iterdir()):
        refuse_existing(output)
    imported: ImportedWeights = weight_format.load("reader")(source)
    cfg = resolve_config(plugin, data, [dict(imported.config), *layers], list(overrides))
    if not cfg.data.exists():
        raise UserError(f"data path {cfg.data} does not exist")
    datamodule = plugin.datamodule(cfg.method, cfg.data)
    datamodule.setup("fit")
    model = plugin.model(cfg.method, datamodule)
    fresh = load_strict(model, imported, source)
    record = {
        "source": str(source.resolve()),
        "sha256": _sha256(source),
        "format": weight_format.name,
        "fresh": fresh,
        "notes": list(imported.notes),
    }
    created = CreatedRun.create(output)
    try:
        config_text = yaml.safe_dump(cfg.to_mapping(), sort_keys=False)
        atomic_write(output / CONFIG_FILE, lambda tmp: tmp.write_text(config_text))
        spec_text = yaml.safe_dump(datamodule.input_spec(), sort_keys=False)
        atomic_write(output / INPUT_SPEC_FILE, lambda tmp: tmp.write_text(spec_text))
        save_weights(model, output / WEIGHTS_FILE)
        save_data_state(datamodule.state_dict(), output / DATA_STATE_FILE)
        record_text = yaml.safe_dump(record, sort_keys=False)
        atomic_write(output / IMPORTED_FILE, lambda tmp: tmp.write_text(record_text))
        write_model_card(output)
    except BaseException:
        created.remove()
        raise
    return output


def yaml_notes(run_dir: Path) -> list[str]:
    """The reader's notes and the freshly initialised keys saved in an imported run's ``imported.yaml``."""
    path = Path(run_dir) / IMPORTED_FILE
    record = yaml.safe_load(path.read_text()) if path.is_file() else {}
    notes = list(record.get("notes") or [])
    if record.get("fresh"):
        notes.append(f"{len(record['fresh'])} tensors not in the file keep their initialisation: "
                     f"{', '.join(record['fresh'][:4])}{' ...' if len(record['fresh']) > 4 else ''}")  # fmt: skip
    return notes


def export_weights(run_dir: Path, fmt: str | None, output: Path) -> Path:
    """Write the trained model of ``run_dir`` to ``output`` in the published format ``fmt``."""
    from .checkpoint import atomic_write
    from .run import load_run

    run_dir, output = Path(run_dir), Path(output)
    run = load_run(run_dir)
    weight_format = _format(run.config.plugin, fmt, "writer")
    writer = weight_format.load("writer")
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda tmp: writer(run.model, run.config.method, Path(tmp)))
    return output
