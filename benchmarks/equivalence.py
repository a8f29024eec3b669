"""Step equivalence of a plugin with its reference implementation, from the same weights, batch and masks.

    python benchmarks/equivalence.py --plugin tera --reference ~/.cache/ssl-domains-refs/s3prl --json

``--reference`` is a checkout of the reference code (``git clone``, or ``git archive`` of a snapshot); it is
loaded by path at run time and nothing of it is copied into this repository. Each plugin's comparison lives in
``benchmarks/_equiv_<plugin>.py``: ``compare(reference) -> dict`` builds ours and the reference at one small
configuration, copies the reference's weights into ours through a documented key map, injects the reference's
masks (or alterations, or context/target sets) into ours, and measures in float64 with the reference-quirk
switches on:

- ``output_max_abs_diff``: every layer's output;
- ``loss_rel_diff``: the loss;
- ``grad_max_rel_diff``: every parameter's gradient after one backward (max |g_ours - g_ref| / max |g_ref|);
- ``steps_loss_max_rel_diff``: the losses over 5 optimiser steps, each side with its own optimiser alike;
- ``import_max_abs_diff``: a checkpoint saved by the reference's own code, imported with ``ssl-domains import``,
  embedded by ours, against the reference's forward on the same input (float32, as users run it).

The last line is one JSON object with those figures, ``reference_commit`` (``git rev-parse HEAD`` of the
checkout; for a ``git archive`` extract, which has no history, the commit the comparison was written against,
with ``reference_commit_checked: false``) and the environment.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_final

PLUGINS = ("tera", "ssast", "tjepa", "croma", "ssl4eo", "alice", "contrastive3d")


def _commit(reference: Path, pinned: str) -> tuple[str, bool]:
    try:
        out = subprocess.run(
            ["git", "-C", str(reference), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip(), True
    except (OSError, subprocess.CalledProcessError):
        return pinned, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugin", required=True, choices=PLUGINS)
    parser.add_argument("--reference", type=Path, required=True, help="checkout of the reference code")
    parser.add_argument("--json", action="store_true", help="print only the final JSON line")
    args = parser.parse_args()
    if not args.reference.is_dir():
        parser.error(f"--reference {args.reference} is not a directory")
    import lightning.pytorch  # noqa: F401  before any reference: their torchvision stand-ins would break torchmetrics

    try:
        module = importlib.import_module(f"_equiv_{args.plugin}")
    except ModuleNotFoundError as exc:
        if exc.name != f"_equiv_{args.plugin}":
            raise
        parser.error(f"no comparison for {args.plugin} yet (benchmarks/_equiv_{args.plugin}.py)")
    started = time.perf_counter()
    result = module.compare(args.reference.resolve())
    pinned = getattr(module, "reference_commit_for", lambda _: module.REFERENCE_COMMIT)(args.reference.resolve())
    commit, checked = _commit(args.reference, pinned)
    summary = {"benchmark": "equivalence", "plugin": args.plugin, **result}
    summary.update(reference=str(args.reference), reference_commit=commit, reference_commit_checked=checked)
    if not args.json:
        for key, value in result.items():
            if not isinstance(value, (list, dict)):
                print(f"{key}: {value}")
    emit_final(summary, started)


if __name__ == "__main__":
    main()
