"""A 2-process DDP run on CPU (gloo, launched by torchrun) trains exactly like one process with the same global
batch: the same loss at every step and the same final weights.

One plugin with an EMA teacher (T-JEPA: the teacher must move identically on every rank) and one without (MERLIN).
See tests/ddp_worker.py for what is held fixed (T-JEPA's masks become a function of the row ids).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssl_domains import registry

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS = 3
GLOBAL_BATCH = 8


def _run(args: list[str], ddp: bool, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if ddp:
        # --standalone: torchrun picks a free port itself
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        batch = GLOBAL_BATCH // 2
    else:
        launch, batch = [sys.executable], GLOBAL_BATCH
    cmd = [*launch, str(WORKER), *args, str(out), "--batch-size", str(batch), "--steps", str(STEPS)]
    if ddp:
        cmd.append("--ddp")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _losses(out: Path, ranks: int) -> np.ndarray:
    per_rank = [json.loads((out / f"losses_rank{r}.json").read_text()) for r in range(ranks)]
    return np.mean(np.array(per_rank), axis=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("plugin_name", "extra"),
    [
        ("tjepa", ["--id-masks", "--set", "tjepa.dropout=0.0"]),
        ("merlin", ["--set", "merlin.patches_per_epoch=32"]),
    ],
)
def test_two_process_ddp_matches_one_process(plugin_name, extra, tmp_path):
    plugin = registry.load(plugin_name)
    data = plugin.make_example_data(tmp_path / "data")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([plugin_name, str(data), *extra], ddp=False, out=single)
    _run([plugin_name, str(data), *extra], ddp=True, out=ddp)

    one, two = _losses(single, 1), _losses(ddp, 2)
    assert len(one) == len(two) == STEPS
    np.testing.assert_allclose(two, one, rtol=1e-5, err_msg="mean over ranks of the DDP losses != single-process loss")
    # the runs learn: a different loss after the first update rules out a test that compares frozen models
    assert not np.allclose(one[0], one[-1])

    w1 = load_file(single / "run" / "model.safetensors")
    w2 = load_file(ddp / "run" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-6, msg=f"weights differ at {key}")
    if plugin_name == "tjepa":
        assert any(k.startswith("target_encoder.") for k in w1), "the EMA teacher is part of the saved model"
