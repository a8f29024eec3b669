"""A trained run in Python, and the run folder as a shareable model.

:func:`load_encoder` is the notebook entry point (no CLI needed)::

    import ssl_domains
    enc = ssl_domains.load_encoder("runs/tera")        # a trained, imported or downloaded run folder
    emb = enc.embed("my_clips/")                        # Embeddings: ids, vectors, labels, source paths
    z = enc.model.embed(batch)                          # or the model itself, on batches of enc.datamodule

A run folder is a model others can load (as an HF Hub folder or a MONAI bundle is): ``model.safetensors``,
``config.json`` (the resolved config, as JSON), ``input_spec.yaml`` (the preprocessing the weights need) and a
``README.md`` model card written by :func:`write_model_card` after training and refreshed by ``evaluate``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import UserError

if TYPE_CHECKING:  # annotations only
    from .plugin import SSLDataModule, SSLModel
    from .run import ResolvedConfig

__all__ = ["Encoder", "load_encoder", "write_model_card"]

EVALUATION_FILE = "evaluation.json"
CARD_FILE = "README.md"
CONFIG_JSON = "config.json"


@dataclass
class Encoder:
    """A trained model with its datamodule (set up with the run's fitted state) and the run's config.

    Unpacks as ``model, datamodule = load_encoder(run)``."""

    model: SSLModel
    datamodule: SSLDataModule
    config: ResolvedConfig
    run_dir: Path

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.datamodule

    def embed(self, data: str | Path | None = None, device: str = "cpu") -> Any:
        """:class:`~ssl_domains.evaluation.Embeddings` of ``data`` (default: the data the encoder was loaded
        on), read and normalised as the training data was: ``model.embed`` over the predict view."""
        from .evaluation import collect_embeddings
        from .run import predict_datamodule

        datamodule = self.datamodule
        if data is not None and Path(data).resolve() != Path(self.config.data).resolve():
            if not Path(data).exists():
                raise UserError(f"data path {data} does not exist")
            config = dataclasses.replace(self.config, data=Path(data))
            datamodule = predict_datamodule(config, self.run_dir)  # the weights are loaded already
        return collect_embeddings(self.model, datamodule.predict_dataloader(), device)


def load_encoder(run_dir: str | Path, data: str | Path | None = None) -> Encoder:
    """The trained encoder of ``run_dir``: the model with its weights, in eval mode on the host, and the
    datamodule set up on ``data`` (default: the training data) with the run's fitted state, so new data is
    preprocessed exactly as the training data was. ``model.embed(batch)`` over ``datamodule.predict_dataloader()``
    gives the embeddings ``ssl-domains embed`` writes; :meth:`Encoder.embed` does that for a path."""
    from .run import load_run

    run = load_run(Path(run_dir), data)
    return Encoder(run.model, run.datamodule, run.config, run.run_dir)


# ---- the model card ----------------------------------------------------------------------------------------------
def _last_metrics(path: Path) -> dict[str, str]:
    """The newest value of each metric in ``metrics.csv`` (empty when there is none)."""
    if not path.is_file():
        return {}
    last: dict[str, str] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            last.update({k: v for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return last


def write_model_card(run_dir: Path) -> Path:
    """Write ``config.json`` and the ``README.md`` model card of ``run_dir`` (method, data, input spec, config,
    figures, training and evaluation metrics, how to load it); return the card's path."""
    from . import registry
    from .checkpoint import atomic_write
    from .run import CONFIG_FILE, INPUT_SPEC_FILE, METRICS_FILE, WEIGHTS_FILE

    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(run_dir / CONFIG_JSON, lambda tmp: tmp.write_text(text))
    plugin = registry.load(str(config["plugin"]))
    spec = (run_dir / INPUT_SPEC_FILE).read_text() if (run_dir / INPUT_SPEC_FILE).is_file() else "(not recorded)\n"
    metrics = _last_metrics(run_dir / METRICS_FILE)
    evaluation = json.loads((run_dir / EVALUATION_FILE).read_text()) if (run_dir / EVALUATION_FILE).is_file() else None
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    lines = [
        "---",
        "library_name: ssl-domains",
        f"tags: [self-supervised, {plugin.name}]",
        "---",
        f"# {plugin.name}: {plugin.description}",
        "",
        f"**Method.** {plugin.paper}",
        "",
        f"**Data.** `{config.get('data')}`. Weights: `{WEIGHTS_FILE}` (safetensors); config: `{CONFIG_FILE}` "
        f"and `{CONFIG_JSON}`.",
        "",
    ]
    if (run_dir / "imported.yaml").is_file():
        origin = yaml.safe_load((run_dir / "imported.yaml").read_text())
        lines += [
            f"**Weights.** Imported from `{origin.get('source')}` (format `{origin.get('format')}`, SHA-256 "
            f"`{origin.get('sha256')}`); not trained here.",
            "",
        ]
    lines += [
        "## Load",
        "",
        "```python",
        "import ssl_domains",
        'enc = ssl_domains.load_encoder(".", data="DIR")  # this folder; DIR in the format it was trained on',
        "emb = enc.embed()                                 # ids, vectors (and labels where the data has them)",
        "```",
        "",
        f'or `ssl-domains embed --run . --data DIR --out emb.parquet` (install: `pip install "ssl-domains'
        f'{"[" + plugin.extra + "]" if plugin.extra else ""}"`).',
        "",
        "## Input the weights expect",
        "",
        "```yaml",
        spec.rstrip("\n"),
        "```",
        "",
    ]
    if metrics:
        lines += ["## Training metrics (last logged value)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
        lines.append("")
    if evaluation:
        lines += [f"## Evaluation (`ssl-domains evaluate`, data `{evaluation.get('data')}`)", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in evaluation.items() if k not in ("data", "run")]
        lines.append("")
    if figures:
        lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in figures] + [""]
    lines += ["## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip("\n"), "```", ""]
    card = "\n".join(lines)
    atomic_write(run_dir / CARD_FILE, lambda tmp: tmp.write_text(card))
    return run_dir / CARD_FILE


def _fmt(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}"
