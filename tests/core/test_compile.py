"""``trainer.compile=true`` works for every first-party plugin: the compiled step computes the eager step's loss,
and the run's checkpoint and weights hold the model's own key names (no ``_orig_mod.`` prefix).

The whole step is compiled (``ssl_domains.module.compile_objective``), so objectives that call submodules (T-JEPA's
context encoder, EMA target and predictor) are compiled too. Inductor draws random numbers with its own generator
unless ``fallback_random`` is set; the test sets it so that compiled and eager runs draw the same masks.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssl_domains import registry
from ssl_domains.run import resolve_config, train

PLUGINS = ["graphmae", "merlin", "tjepa"]


def _first_losses(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_step")]
    return [float(r["train/loss_step"]) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("name", PLUGINS)
def test_compiled_step_matches_eager_and_checkpoints_stay_clean(name, tmp_path):
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    plugin = registry.load(name)
    data = plugin.make_example_data(tmp_path / "data")
    sets = ["trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.progress_bar=false"]
    runs = {}
    for mode in ("eager", "compiled"):
        flags = {"seed": 0, "accelerator": "cpu", "devices": 1}
        cfg = resolve_config(
            plugin, data, [dict(plugin.example_overrides())], [*sets, f"trainer.compile={mode == 'compiled'}"], flags
        )
        with inductor_config.patch(fallback_random=True):
            runs[mode] = train(cfg, tmp_path / mode)

    eager, compiled = _first_losses(runs["eager"]), _first_losses(runs["compiled"])
    assert len(eager) == len(compiled) == 2
    assert compiled == pytest.approx(eager, rel=1e-4)
    state = torch.load(runs["compiled"] / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(k.startswith("model.") and "_orig_mod" not in k for k in state)
    assert (
        load_file(runs["compiled"] / "model.safetensors").keys()
        == load_file(runs["eager"] / "model.safetensors").keys()
    )
