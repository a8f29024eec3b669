"""Conformance kit for plugin authors (in the spirit of scikit-learn's ``check_estimator``).

Run every check on a plugin::

    from ssl_domains.testing import check_plugin
    check_plugin(MyPlugin())

or get one pytest test per check, in your own CI::

    from ssl_domains.testing import parametrize_with_checks

    @parametrize_with_checks([MyPlugin()])
    def test_conformance(plugin, check, tmp_path):
        check(plugin, tmp_path)

The checks use the plugin's own ``make_example_data`` and its default config, with ``example_overrides()``
applied (a plugin can shrink its model there so the kit runs in seconds).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import registry
from .config import from_mapping, merge, to_mapping
from .plugin import ModalityPlugin, SSLDataModule, SSLModel

if TYPE_CHECKING:  # annotations only
    from .run import ResolvedConfig

__all__ = ["CHECKS", "PluginCheckError", "check_plugin", "parametrize_with_checks"]

Check = Callable[[ModalityPlugin, Path], None]


class PluginCheckError(AssertionError):
    """A conformance check failed; the message names the check and what to change.

    A real exception rather than ``assert``, so that ``python -O`` (which strips asserts) cannot pass a plugin.
    It subclasses ``AssertionError`` so that pytest reports it as a failed check, as it would an assert.
    """


def _require(condition: Any, message: str) -> None:
    """Raise :class:`PluginCheckError` naming the calling check when ``condition`` is false."""
    if not condition:
        frame, check = sys._getframe(1), None
        while frame is not None and check is None:  # the check itself, also when a helper of it failed
            check = frame.f_code.co_name if frame.f_code.co_name.startswith("check_") else None
            frame = frame.f_back
        raise PluginCheckError(f"{check or 'check'}: {message}")


def _overrides(plugin: ModalityPlugin, extra: Mapping[str, Any] | None = None) -> list[str]:
    def flatten(prefix: str, node: Any) -> Iterator[str]:
        if isinstance(node, Mapping):
            for k, v in node.items():
                yield from flatten(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            yield f"{prefix}={json.dumps(node)}"

    return list(flatten("", plugin.example_overrides())) + list(flatten("", extra or {}))


def _config(plugin: ModalityPlugin, data: Path) -> ResolvedConfig:
    from .run import resolve_config

    return resolve_config(plugin, data, [], _overrides(plugin))


def _built(plugin: ModalityPlugin, tmp_path: Path) -> tuple[ResolvedConfig, SSLDataModule, SSLModel]:
    """(resolved config, set-up datamodule, fresh model) on the plugin's example data."""
    import lightning.pytorch as pl

    data = plugin.make_example_data(tmp_path / "data")
    cfg = _config(plugin, data)
    pl.seed_everything(0, verbose=False)
    dm = plugin.datamodule(cfg.method, data)
    dm.setup("fit")
    return cfg, dm, plugin.model(cfg.method, dm)


def _first_batch(dm: SSLDataModule, stage: str = "train") -> dict[str, Any]:
    """The first batch of ``dm``'s ``stage`` loader as the objective sees it: after the datamodule's
    ``on_after_batch_transfer`` (Lightning calls it once the batch is on the device; a plugin may finish its
    batches there, as the audio plugin computes its features)."""
    batch = next(iter(getattr(dm, f"{stage}_dataloader")()))
    _require(isinstance(batch, dict), f"batches must be dicts, got {type(batch).__name__}")
    batch = dm.on_after_batch_transfer(batch, 0)
    _require(isinstance(batch, dict), f"on_after_batch_transfer must return a dict, got {type(batch).__name__}")
    return batch


@contextmanager
def _discoverable(plugin: ModalityPlugin) -> Iterator[None]:
    """Use real entry-point discovery when the plugin is installed, else register it for the block."""
    record = registry.discover().get(plugin.name)
    if record is not None and record.target.endswith(type(plugin).__qualname__):
        yield
    else:
        with registry.temporary_plugins(plugin):
            yield


def _cli(plugin: ModalityPlugin, *argv: str) -> None:
    from .cli import main

    with _discoverable(plugin):
        code = main(list(argv))
    _require(code == 0, f"`ssl-domains {' '.join(argv)}` exited with {code}")


# -------------------------------------------------------------------------------------------------- checks


def check_metadata(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """name, description, paper, config, data_formats and batch_keys (with ``id``) are declared, and nothing
    of the first contract is left."""
    from .plugin import contract_problems

    problems = contract_problems(type(plugin))
    _require(not problems, "written for the first plugin contract; change: " + "; ".join(problems))
    for attr in ("name", "description", "paper"):
        value = getattr(plugin, attr, None)
        _require(isinstance(value, str) and value.strip(), f"{attr} must be a non-empty string")
    _require(plugin.name.replace("-", "_").replace("_", "a").isalnum(), "name must be alphanumeric, '-' or '_'")
    _require(plugin.extra is None or isinstance(plugin.extra, str), "extra must be a string or None")
    _require(all(isinstance(r, str) for r in plugin.requires), "requires lists import names (strings)")
    _require(plugin.data_formats, "data_formats must describe at least one accepted input")
    _require(plugin.batch_keys.get("id") == "int64", "batch_keys must declare 'id': 'int64'")


def check_input_spec(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """The plugin declares its input spec, and the datamodule's ``input_spec()`` on the example data gives a value
    for every declared key (and no other), as plain YAML."""
    _require(plugin.input_spec, "declare input_spec: what an input must be for the weights (rate, bands, ...)")
    _, dm, _ = _built(plugin, tmp_path)
    spec = dm.input_spec()
    _require(
        set(spec) == set(plugin.input_spec), f"input_spec() keys {sorted(spec)} != declared {sorted(plugin.input_spec)}"
    )
    try:
        yaml.safe_dump(spec)
    except yaml.YAMLError as exc:
        raise PluginCheckError(f"check_input_spec: input_spec() must hold plain YAML values ({exc})") from None


def check_config_yaml_roundtrip(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """The default config survives YAML dump and load unchanged."""
    cfg = plugin.default_config()
    _require(dataclasses.is_dataclass(cfg), "config must be a dataclass (declared with config.option fields)")
    text = yaml.safe_dump(to_mapping(cfg))
    again = from_mapping(type(cfg), yaml.safe_load(text), plugin.name)
    _require(again == cfg, "default config changed through YAML")
    merged = merge(to_mapping(cfg), yaml.safe_load(text))
    _require(merged == to_mapping(cfg), "check failed")


def check_datamodule_batches(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """Training batches are dicts with the declared keys and dtypes; ``id`` has one entry per item."""
    _, dm, _ = _built(plugin, tmp_path)
    batch = _first_batch(dm)
    for key, dtype in plugin.batch_keys.items():
        _require(key in batch, f"batch lacks declared key {key!r} (has {sorted(batch)})")
        got = str(batch[key].dtype).replace("torch.", "")
        _require(got == dtype, f"batch[{key!r}] has dtype {got}, declared {dtype}")
    _require(batch["id"].ndim == 1 and len(batch["id"]) > 0, "check failed")


def check_masking_deterministic(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """Under one seed the objective (masking included) gives the same loss; under another seed it differs
    (or, for an objective whose class sets ``stochastic = False``, stays the same)."""
    import torch

    cfg, dm, model = _built(plugin, tmp_path)
    objective = plugin.objective(cfg.method)
    batch = _first_batch(dm)
    model.train()
    losses = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.append(objective(model, batch)["loss"])
    _require(torch.equal(losses[0], losses[1]), f"same seed, different losses: {losses[0]} vs {losses[1]}")
    if getattr(objective, "stochastic", True):
        _require(not torch.equal(losses[0], losses[2]), "a different seed gave the same loss: is the masking random?")
    else:
        _require(
            torch.equal(losses[0], losses[2]), "the objective sets stochastic = False, yet the seed changed the loss"
        )


def check_objective_finite_and_differentiable(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """The loss is a finite scalar, and backward gives finite, non-zero gradients."""
    import torch

    cfg, dm, model = _built(plugin, tmp_path)
    out = plugin.objective(cfg.method)(model.train(), _first_batch(dm))
    _require("loss" in out, "the objective must return {'loss': ...}")
    loss = out["loss"]
    _require(loss.ndim == 0 and torch.isfinite(loss), f"loss must be a finite scalar, got {loss}")
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    _require(grads, "no parameter received a gradient")
    _require(all(torch.isfinite(g).all() for g in grads), "non-finite gradient")
    _require(any(g.abs().sum() > 0 for g in grads), "all gradients are zero")


def check_objective_under_bf16_autocast(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """Under ``torch.autocast(bfloat16)`` (``--precision bf16-mixed``) the loss is a finite float32 scalar and the
    gradients are finite: losses that need the precision are computed in float32."""
    import torch

    cfg, dm, model = _built(plugin, tmp_path)
    batch = _first_batch(dm)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = plugin.objective(cfg.method)(model.train(), batch)["loss"]
    _require(loss.dtype == torch.float32, f"under bf16 autocast the loss is {loss.dtype}; compute it in float32")
    _require(torch.isfinite(loss), f"under bf16 autocast the loss is {loss}")
    loss.backward()
    _require(all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), "non-finite grad")


def check_every_parameter_gets_a_gradient(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """Every trainable parameter takes part in the loss.

    A parameter that never gets a gradient wastes optimiser state, and under DDP it stops training: PyTorch's
    reducer waits for its gradient, so the first step's gradients are not averaged across ranks and the second
    step fails ("parameters that were not used in producing the loss"). Freeze what the objective does not use
    (``requires_grad_(False)``; the weights stay in the state dict) or do not build it.
    """
    import torch

    cfg, dm, model = _built(plugin, tmp_path)
    torch.manual_seed(0)
    plugin.objective(cfg.method)(model.train(), _first_batch(dm))["loss"].backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    _require(not unused, f"{len(unused)} trainable parameters get no gradient (first: {unused[:4]}); freeze them")


def check_overfits_one_batch(plugin: ModalityPlugin, tmp_path: Path, steps: int = 40) -> None:
    """With the masking fixed (same seed every step), Adam drives the loss on one batch down by >= 10%."""
    import torch

    cfg, dm, model = _built(plugin, tmp_path)
    objective = plugin.objective(cfg.method)
    batch = _first_batch(dm)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)
        loss = objective(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    _require(losses[-1] < 0.9 * losses[0], f"loss did not fall when overfitting: {losses[0]:.4f} -> {losses[-1]:.4f}")


def _train_cli(plugin: ModalityPlugin, tmp_path: Path, *flags: str) -> tuple[Path, Path]:
    """``ssl-domains train`` on the example data with the example overrides; ``(data, run directory)``."""
    data = plugin.make_example_data(tmp_path / "data")
    out = tmp_path / "run"
    sets = [a for o in ["trainer.progress_bar=false", *_overrides(plugin)] for a in ("--set", o)]
    _cli(plugin, "train", "--plugin", plugin.name, "--data", str(data), "--output", str(out), *flags, *sets)
    return data, out


def check_fast_dev_run_cli(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """``ssl-domains train --fast-dev-run`` succeeds through the real CLI and writes the run directory."""
    _, out = _train_cli(plugin, tmp_path, "--fast-dev-run")
    for name in ("config.yaml", "model.safetensors"):
        _require((out / name).is_file(), f"the run directory lacks {name}")


def check_cli_round_trip(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """Through the real CLI: ``train`` writes a ``last.ckpt`` that loads with ``weights_only=True`` and equals
    ``model.safetensors``; ``--resume`` continues it; ``evaluate --json`` prints finite metrics; ``embed`` writes
    one ``embed_dim`` row per item, with unique ids."""
    import io
    import math
    from contextlib import redirect_stdout

    import pyarrow.parquet as pq
    import torch

    from .checkpoint import load_weights

    data, out = _train_cli(plugin, tmp_path, "--max-epochs", "1", "--set", "trainer.limit_train_batches=2")
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    _require(
        ckpt.get("finished_epochs") == 1,
        f"after one epoch the checkpoint should count 1 finished epoch, not {ckpt.get('finished_epochs')}",
    )
    state = ckpt["state_dict"]
    _require(state and all(k.startswith("model.") for k in state), "checkpoint keys must be model.*")
    _require(not any("_orig_mod." in k for k in state), "checkpoint holds torch.compile prefixes")
    _cfg, rebuilt_dm, model = _built(plugin, tmp_path / "rebuild")
    load_weights(model, out / "model.safetensors")
    for key, value in model.state_dict().items():
        _require(torch.equal(value, state[f"model.{key}"]), f"model.safetensors and last.ckpt differ at {key}")
    _cli(plugin, "train", "--resume", str(out), "--max-epochs", "2")
    again = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    _require(
        again.get("finished_epochs") == 2,
        f"the resumed run should end with 2 finished epochs, not {again.get('finished_epochs')}",
    )
    saved = yaml.safe_load((out / "input_spec.yaml").read_text())
    _require(set(saved) == set(plugin.input_spec), "the run's input_spec.yaml lacks declared keys")
    printed = io.StringIO()
    with redirect_stdout(printed):
        _cli(plugin, "evaluate", "--run", str(out), "--json")
    metrics = json.loads(printed.getvalue().strip().splitlines()[-1])
    _require(metrics.get("plugin") == plugin.name, f"evaluate printed no metrics of {plugin.name}: {metrics}")
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    _require(not bad, f"evaluate gave non-finite metrics: {bad}")
    with redirect_stdout(io.StringIO()):
        _cli(plugin, "embed", "--run", str(out), "--data", str(data), "--out", str(tmp_path / "emb.parquet"))
    table = pq.read_table(tmp_path / "emb.parquet").to_pandas()
    _require(len(table) > 0 and table["id"].is_unique, "embed must write one row per item, with unique ids")
    _require(len(table["embedding"].iloc[0]) == model.embed_dim, "embed rows must have embed_dim values")
    declared = set(rebuilt_dm.provenance(table["id"].to_numpy()[:2]))
    missing = declared - set(table.columns)
    _require(not missing, f"embed dropped the datamodule's provenance columns {sorted(missing)}")
    if "geometry" in declared:
        geo = pq.read_schema(tmp_path / "emb.parquet").metadata or {}
        _require(b"geo" in geo, "a geometry column must carry GeoParquet 'geo' metadata")


def check_weight_formats_round_trip(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """Every weight format with a writer and a reader round-trips the weights: a model written by ``export``'s
    writer (at the format's ``example_overrides``) and brought back by ``ssl-domains import`` holds the same
    tensors, except those the reader reports fresh (a format that holds part of the model, such as an encoder
    alone, says so in ``imported.yaml``). (Preprocessing a format cannot store, such as published normalisation
    statistics, is the reader's to set; nothing to check when the plugin declares no such format.)"""
    import io
    from contextlib import redirect_stdout

    import lightning.pytorch as pl
    import yaml

    from .encoder import load_encoder
    from .run import resolve_config
    from .transfer import IMPORTED_FILE

    formats = [f for f in plugin.weight_formats if f.reader and f.writer]
    data = plugin.make_example_data(tmp_path / "data") if formats else None
    for fmt in formats:
        overrides = _overrides(plugin, fmt.example_overrides)
        cfg = resolve_config(plugin, data, [], overrides)
        pl.seed_everything(0, verbose=False)
        dm = plugin.datamodule(cfg.method, data)
        dm.setup("fit")
        model = plugin.model(cfg.method, dm).eval()
        path = tmp_path / f"exported.{fmt.name}"
        fmt.load("writer")(model, cfg.method, path)
        run = tmp_path / f"imported-{fmt.name}"
        sets = [arg for item in overrides for arg in ("--set", item)]
        with redirect_stdout(io.StringIO()):
            _cli(plugin, "import", "--plugin", plugin.name, "--from", str(path), "--format", fmt.name,
                 "--data", str(cfg.data), "--output", str(run), *sets)  # fmt: skip
        again, _dm = load_encoder(run, cfg.data)
        theirs = again.state_dict()
        fresh = set((yaml.safe_load((run / IMPORTED_FILE).read_text()) or {}).get("fresh") or [])
        for key, value in model.state_dict().items():
            if key in fresh:
                continue
            _require(key in theirs, f"format {fmt.name}: {key} is lost on the way out and back")
            _require(
                theirs[key].shape == value.shape and bool((theirs[key].float() - value.float()).abs().max() <= 1e-6)
                if value.numel()
                else True,
                f"format {fmt.name}: {key} differs after export and import",
            )


def check_embed_shape(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """``model.embed(batch)`` is a finite ``[len(batch['id']), model.embed_dim]`` tensor."""
    import torch

    _, dm, model = _built(plugin, tmp_path)
    dm.setup("predict")
    batch = _first_batch(dm, "predict")
    _require(isinstance(getattr(model, "embed_dim", None), int), "the model must define embed_dim: int")
    with torch.no_grad():
        z = model.eval().embed(batch)
    _require(tuple(z.shape) == (len(batch["id"]), model.embed_dim), f"embed shape {tuple(z.shape)}")
    _require(torch.isfinite(z).all(), "embed returned NaN or inf")


def check_monitor_detects_collapse(plugin: ModalityPlugin, tmp_path: Path) -> None:
    """The live monitor reads the plugin's predict view: no alarm for the initialised model, and an alarm naming
    the step right after a seeded collapse (every parameter zeroed after the first step)."""
    import warnings

    import lightning.pytorch as pl
    import torch

    from .monitor import CollapseWarning, RepresentationMonitor
    from .run import resolve_config, train

    class ZeroEveryParameter(pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.zero_()

    cfg, dm, model = _built(plugin, tmp_path)
    healthy = RepresentationMonitor(cfg.monitor, dm).measure(model, torch.device("cpu"))
    _require(
        not healthy["collapsed"],
        f"the monitor sees collapse in the initialised model (effective rank {healthy['effective_rank']:.2f}, "
        f"constant {bool(healthy['constant'])}): embed must vary with the input",
    )
    extra = {"trainer": {"max_steps": 1, "progress_bar": False, "loggers": ["csv"]}, "monitor": {"every_n_steps": 1}}
    cfg = resolve_config(plugin, cfg.data, [], _overrides(plugin, extra))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CollapseWarning)
        train(cfg, tmp_path / "run", callbacks=[ZeroEveryParameter()])
    alarms = [str(w.message) for w in caught if issubclass(w.category, CollapseWarning)]
    _require(alarms and "at step 1" in alarms[0], f"no collapse warning at step 1 after zeroing the model: {alarms}")
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    _require("monitor/collapsed" in metrics, "the monitor's metrics did not reach the run's loggers")


CHECKS: tuple[Check, ...] = (
    check_metadata,
    check_input_spec,
    check_config_yaml_roundtrip,
    check_datamodule_batches,
    check_masking_deterministic,
    check_objective_finite_and_differentiable,
    check_every_parameter_gets_a_gradient,
    check_objective_under_bf16_autocast,
    check_overfits_one_batch,
    check_fast_dev_run_cli,
    check_cli_round_trip,
    check_weight_formats_round_trip,
    check_embed_shape,
    check_monitor_detects_collapse,
)


def check_plugin(plugin: ModalityPlugin, tmp_path: Path | None = None) -> None:
    """Run every check; raise :class:`PluginCheckError` listing each failing check and why."""
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp_path or tmp)
        for check in CHECKS:
            try:
                check(plugin, root / check.__name__)
            except PluginCheckError as exc:
                failures.append(str(exc))
            except AssertionError as exc:  # an assert inside the plugin's own code
                failures.append(f"{check.__name__}: {exc}")
    if failures:
        raise PluginCheckError(f"plugin {plugin.name!r} fails {len(failures)} check(s):\n" + "\n".join(failures))


def parametrize_with_checks(plugins: list[ModalityPlugin]) -> Any:
    """A ``pytest.mark.parametrize`` over ``(plugin, check)`` pairs, one test id per pair."""
    import pytest

    pairs = [(p, c) for p in plugins for c in CHECKS]
    ids = [f"{p.name}-{c.__name__.removeprefix('check_')}" for p, c in pairs]
    return pytest.mark.parametrize(("plugin", "check"), pairs, ids=ids)
