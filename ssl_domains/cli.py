"""``ssl-domains``: list | info | train | embed | evaluate | import | export | run.

``list``, ``info`` and ``--help`` never import torch. Every user error (unknown plugin, bad ``--set`` key, missing
data path, wrong type in a YAML file, missing extra, unreadable data) ends as one ``error: ...`` line and exit
code 2. A failed run (NaN loss, a checkpoint that cannot be written) exits 1; a preempted run (SIGTERM, SIGUSR1,
Ctrl-C), after writing a checkpoint at its current step, exits 75 (``EX_TEMPFAIL``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, registry
from .errors import CheckpointWriteError, ConfigError, NonFiniteLossError, Preempted, UserError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the user sees what is wrong and where to look.
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _devices(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices must be an integer or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all sub-commands."""
    parser = _Parser(prog="ssl-domains", description="Self-supervised pretraining on scientific data.")
    parser.add_argument("--version", action="version", version=f"ssl-domains {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="list installed plugins and their status")
    p.add_argument("--json", action="store_true", help="print one JSON object per plugin")

    p = sub.add_parser("info", help="describe a plugin: paper, data formats, presets, config fields")
    p.add_argument("plugin")

    p = sub.add_parser("train", help="pretrain a plugin; writes a run directory")
    p.add_argument("--plugin", help="plugin name (see `ssl-domains list`)")
    p.add_argument("--data", help="path to the training data (formats: `ssl-domains info PLUGIN`)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="YAML file or plugin preset name; repeatable, later ones win",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. optim.lr=1e-3 or graphmae.mask_rate=0.5",
    )
    p.add_argument("--output", help="run directory (default: runs/PLUGIN/TIMESTAMP)")
    p.add_argument("--resume", metavar="DIR|last", help="continue a run from its last.ckpt")
    p.add_argument(
        "--init-from",
        metavar="RUN",
        help="start from the weights (and, below --config and --set, the config) of a trained or imported run",
    )
    p.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="with --output DIR: continue DIR if it holds a checkpoint of this config, else start it (requeued jobs)",
    )
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed, ...")
    p.add_argument("--devices", type=_devices)
    p.add_argument("--accelerator", help="cpu, gpu, auto")
    p.add_argument("--strategy", help="auto, ddp, ddp_spawn, fsdp")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--fast-dev-run", action="store_true", help="run one batch to check the setup")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    p = sub.add_parser("embed", help="write embeddings of data with a trained run")
    p.add_argument("--run", required=True, help="run directory written by `train`")
    p.add_argument("--data", required=True)
    p.add_argument(
        "--out",
        required=True,
        help="output .parquet (id, embedding, label, provenance columns) or .npy (ids in <stem>.ids.npy, the other "
        "columns in <stem>.rows.parquet); with several devices, one shard per rank: <stem>-00000-of-00002.parquet",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--devices", type=_devices, default=1, help="devices per node; more than one runs DDP")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, ...")
    p.add_argument(
        "--per-position",
        action="store_true",
        help="one vector per position of each item (e.g. frames or tokens), where the plugin's model gives them",
    )

    p = sub.add_parser("evaluate", help="RankMe; linear probe + kNN when labels exist; or the plugin's protocol")
    p.add_argument("--run", required=True)
    p.add_argument("--data", help="data to evaluate on (default: the run's training data)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation split, when the data has none")

    p = sub.add_parser("import", help="turn a published checkpoint into a run folder (formats: `info PLUGIN`)")
    p.add_argument("--plugin", required=True)
    p.add_argument("--from", dest="source", required=True, metavar="FILE", help="the published checkpoint")
    p.add_argument("--format", help="the checkpoint's format (default: the plugin's only one)")
    p.add_argument("--data", required=True, help="data the datamodule is set up on (what it fits is fitted there)")
    p.add_argument("--output", required=True, help="the run folder to write")
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("export", help="write a run's model in a published format, loadable by the method's code")
    p.add_argument("--run", required=True)
    p.add_argument("--format", help="the format (default: the plugin's only one)")
    p.add_argument("--output", required=True, metavar="FILE")

    p = sub.add_parser("run", help="run a command contributed by a plugin (see `ssl-domains info PLUGIN`)")
    p.add_argument("plugin")
    p.add_argument("plugin_command", metavar="COMMAND")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


# ------------------------------------------------------------------------------------------------ commands


def cmd_list(args: argparse.Namespace) -> int:
    rows = registry.report()
    if args.json:
        for r in rows:
            print(json.dumps(r.__dict__))
        return 0
    if not rows:
        print("no plugins installed")
        return 0
    width = {k: max(len(k), *(len(str(getattr(r, k))) for r in rows)) for k in ("name", "version", "status")}
    print(f"{'NAME':<{width['name']}}  {'VERSION':<{width['version']}}  {'STATUS':<{width['status']}}  DESCRIPTION")
    for r in rows:
        text = r.description if r.status == "ok" else r.detail
        print(f"{r.name:<{width['name']}}  {r.version:<{width['version']}}  {r.status:<{width['status']}}  {text}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .config import MonitorConfig, OptimConfig, TrainerConfig, describe_fields, merge

    records = registry.discover()
    if args.plugin not in records:
        registry.load(args.plugin)  # raises the standard "unknown plugin" error
    record = records[args.plugin]
    try:
        plugin = record.load_class_instance()
    except Exception as exc:
        raise UserError(f"plugin {args.plugin!r} failed to load: {type(exc).__name__}: {exc}") from None
    missing = plugin.missing_requirements()
    status = f"missing {', '.join(missing)}: {plugin.install_command(record.distribution)}" if missing else "ok"
    print(f"{plugin.name}  ({record.distribution} {record.version}, status: {status})")
    print(f"  {plugin.description}")
    print(f"paper: {plugin.paper}")
    print("data formats accepted by --data:")
    for fmt in plugin.data_formats:
        print(f"  - {fmt}")
    if plugin.input_spec:
        print("input the weights expect (each run saves its values as input_spec.yaml):")
        for key, meaning in plugin.input_spec.items():
            print(f"  {key}: {meaning}")
    presets = plugin.presets()
    if presets:
        print(f"presets (--config NAME): {', '.join(presets)}")
    if plugin.weight_formats:
        print("published weight formats (ssl-domains import / export --format NAME):")
        for f in plugin.weight_formats:
            roles = "/".join(r for r, t in (("import", f.reader), ("export", f.writer)) if t)
            print(f"  {f.name} ({roles}): {f.help}")
    if plugin.commands:
        print(f"commands (ssl-domains run {plugin.name} COMMAND):")
        for c in plugin.commands:
            print(f"  {c.name}: {c.help}")
    print("config (--set SECTION.KEY=VALUE):")
    defaults = plugin.run_defaults
    sections = [
        (plugin.name, plugin.config, {}),
        ("trainer", TrainerConfig, defaults.get("trainer", {})),
        ("optim", OptimConfig, defaults.get("optim", {})),
        ("monitor", MonitorConfig, defaults.get("monitor", {})),
    ]
    for section, cls, override in sections:
        for name, type_name, default, doc in describe_fields(cls):
            default = merge({"v": default}, {"v": override[name]})["v"] if name in override else default
            print(f"  {section}.{name}: {type_name} = {json.dumps(default)}  # {doc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .run import CONFIG_FILE, is_worker_process, read_yaml, resolve_config, train
    from .rundir import default_run_dir, latest_run, plan_run_dir

    flags: dict[str, Any] = {
        "max_epochs": args.max_epochs,
        "precision": args.precision,
        "devices": args.devices,
        "accelerator": args.accelerator,
        "strategy": args.strategy,
        "num_nodes": args.num_nodes,
        "seed": args.seed,
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    resume = bool(args.resume)
    if args.resume and args.resume_if_exists:
        raise UserError("--resume DIR and --resume-if-exists exclude each other; give one")
    if args.resume and args.init_from:
        raise UserError("--resume continues a run; --init-from starts a new one from its weights: give one")
    if args.resume:
        if args.config or args.set:
            raise UserError("--resume keeps the run's config; --config and --set are not allowed with it")
        run_dir = latest_run(args.plugin) if args.resume == "last" else Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"--resume {args.resume}: {run_dir} has no {CONFIG_FILE}; is it a run directory?")
        raw = read_yaml(str(run_dir / CONFIG_FILE))
        if args.plugin and args.plugin != raw.get("plugin"):
            raise UserError(f"--resume {run_dir} is a {raw.get('plugin')} run, not {args.plugin}")
        plugin = registry.load(str(raw.get("plugin")))
        cfg = resolve_config(plugin, args.data, [raw], [], flags)
    else:
        name, base = args.plugin, []
        if args.init_from:
            if not (Path(args.init_from) / CONFIG_FILE).is_file():
                raise UserError(f"--init-from {args.init_from}: no {CONFIG_FILE}; pass a trained or imported run")
            origin = read_yaml(str(Path(args.init_from) / CONFIG_FILE))
            if name and name != origin.get("plugin"):
                raise UserError(f"--init-from {args.init_from} is a {origin.get('plugin')} run, not {name}")
            name, base = str(origin.get("plugin")), [{k: v for k, v in origin.items() if k != "data"}]
        if name is None:
            files = [read_yaml(c) for c in args.config if Path(c).is_file()]
            name = next((f["plugin"] for f in files if "plugin" in f), None)
        if name is None:
            raise UserError("which plugin? pass --plugin NAME (see `ssl-domains list`)")
        plugin = registry.load(name)
        layers = base + [read_yaml(c, plugin) for c in args.config]
        cfg = resolve_config(plugin, args.data, layers, args.set, flags)
        if args.resume_if_exists and not args.output:
            raise UserError("--resume-if-exists needs --output DIR: the run that a re-run of this command continues")
        run_dir = Path(args.output) if args.output else default_run_dir(plugin.name)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_mapping(), sort_keys=False), end="")
        return 0
    if not cfg.data.exists():
        raise UserError(f"data path {cfg.data} does not exist")
    run_dir, resume = plan_run_dir(
        run_dir, cfg.to_mapping(), resume=resume, resume_if_exists=args.resume_if_exists,
        output_given=bool(args.output),
    )  # fmt: skip
    init_from = Path(args.init_from) if args.init_from else None
    train(cfg, run_dir, resume=resume, fast_dev_run=args.fast_dev_run, init_from=init_from)
    if not is_worker_process():
        print(f"run directory: {run_dir}")
    return 0


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_embed(args: argparse.Namespace) -> int:
    from .evaluation.export import export_embeddings
    from .run import load_run

    if not Path(args.data).exists():
        raise UserError(f"data path {args.data} does not exist")
    if Path(args.out).suffix not in (".npy", ".parquet"):
        raise UserError(f"--out must end in .npy or .parquet, got {args.out}")
    run = load_run(Path(args.run), args.data)
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}.get(args.device, args.device)
    done = export_embeddings(
        run.model, run.datamodule, Path(args.out), per_position=args.per_position, accelerator=accelerator,
        devices=args.devices, num_nodes=args.num_nodes, precision=args.precision,
    )  # fmt: skip
    shard = f" (rank {done.rank} of {done.world_size})" if done.world_size > 1 else ""
    what = f"rows of {done.items} items" if args.per_position else "embeddings"
    where = ", ".join(map(str, done.paths)) or "no shard: this rank had no items"
    print(f"wrote {done.rows} {what} of dimension {done.dim}{shard}: {where}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .evaluation import embeddings_once, evaluate_embeddings, predict_embeddings, rankme
    from .run import load_run

    if args.data is not None and not Path(args.data).exists():
        raise UserError(f"data path {args.data} does not exist")
    run = load_run(Path(args.run), args.data)
    device = torch.device(_device(args.device))
    torch.manual_seed(args.seed)
    model = run.model.to(device).eval()
    with embeddings_once():  # the plugin's protocol and the core's figures read the same embeddings
        plugin_metrics = run.config.plugin.evaluate(model, run.datamodule, run.config.method, device)
        emb = predict_embeddings(model, run.datamodule, device)
    if plugin_metrics is None:
        metrics = evaluate_embeddings(emb, seed=args.seed)
    else:
        metrics = {"rankme": rankme(emb.vectors), "num_items": len(emb.ids), **plugin_metrics}
    metrics = {"plugin": run.config.plugin.name, "run": str(run.run_dir), **metrics}
    _record_evaluation(run.run_dir, {"data": str(run.config.data), **metrics})
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def _record_evaluation(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Keep the metrics with the run (``evaluation.json``) and refresh its model card; a run folder that is not
    writable (a shared, read-only model) is evaluated all the same."""
    from .checkpoint import atomic_write
    from .encoder import EVALUATION_FILE, write_model_card

    text = json.dumps(metrics, indent=2, default=str) + "\n"
    try:
        atomic_write(run_dir / EVALUATION_FILE, lambda tmp: tmp.write_text(text))
        write_model_card(run_dir)
    except OSError as exc:
        print(f"note: {run_dir} is not writable ({exc.strerror}); the metrics were not saved with it", file=sys.stderr)


def cmd_import(args: argparse.Namespace) -> int:
    from .run import read_yaml
    from .transfer import import_weights, yaml_notes

    plugin = registry.load(args.plugin)
    layers = [read_yaml(c, plugin) for c in args.config]
    run_dir = import_weights(plugin, Path(args.source), args.data, Path(args.output), args.format, layers, args.set)
    for note in yaml_notes(run_dir):
        print(f"note: {note}")
    print(f"run directory: {run_dir} (embed, evaluate, or train --init-from {run_dir})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .transfer import export_weights

    print(f"wrote {export_weights(Path(args.run), args.format, Path(args.output))}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    plugin = registry.load(args.plugin)
    commands = {c.name: c for c in plugin.commands}
    if args.plugin_command not in commands:
        names = ", ".join(commands) or "none"
        raise UserError(f"plugin {plugin.name} has no command {args.plugin_command!r} (commands: {names})")
    return int(commands[args.plugin_command].load()(list(args.args)) or 0)


COMMANDS = {
    "list": cmd_list,
    "info": cmd_info,
    "train": cmd_train,
    "embed": cmd_embed,
    "evaluate": cmd_evaluate,
    "import": cmd_import,
    "export": cmd_export,
    "run": cmd_run,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssl-domains`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (NonFiniteLossError, CheckpointWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Preempted as exc:
        print(f"preempted: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
