"""One training step of the reference TERA (s3prl/s3prl @ ec8064b, ``pretrain/tera``) at our configuration, for
speed comparisons.

The reference is never part of this repository: pass the directory of a checkout
(``git clone https://github.com/s3prl/s3prl /tmp/s3prl_ref && git -C /tmp/s3prl_ref checkout ec8064b``).
s3prl's package ``__init__`` (torchaudio backends, the hub) is never imported: four files are loaded by path,
``upstream/mockingjay/model.py`` (the transformer), ``pretrain/mockingjay/task.py`` (the masking),
``pretrain/mockingjay/pretrain_expert.py`` (``TransformerForMaskedAcousticModel``, its L1 loss, and the expert's
``forward``; its data-set, feature-extractor and plotting imports get empty stand-ins) and ``optimizers.py``.
``pretrain/tera/pretrain_expert.py`` is the mockingjay expert re-exported; TERA differs only by its config
(``pretrain/tera/config_model.yaml``, ``config_runner.yaml``).

What one reference step does, all included in the closure: a fresh copy of the padded host batch (the data set
mutates it in place), ``generate_masked_acoustic_model_data`` (its ``__getitem__``: a Python loop over the clips
with ``random`` / ``torch.randperm`` draws and indexed writes on host tensors, the sinusoidal table, the
attention and label masks), ``UpstreamPretrainExpert.forward`` (host-to-device copies of the five tensors, the
transformer, the prediction head, L1 over ``masked_select`` of the altered positions, after an ``assert
mask_label.sum() > 0``: a host sync), backward, ``loss.item()`` (the runner's running loss: a host sync),
``clip_grad_norm_`` at 5 and its ``math.isnan(grad_norm)`` check (a host sync), the optimizer step and
``zero_grad``, as ``pretrain/runner.py`` (L153-L217) does them.

Settings mapped from our ``TERAConfig``: ``num_mel_bins`` (``input_dim``; output = input), ``dim``
(``hidden_size`` and ``position_encoding_size``), ``depth``, ``heads``, ``ff_dim`` (``intermediate_size``),
``dropout`` (``hidden_dropout_prob`` and ``attention_probs_dropout_prob``), ``time_mask_ratio``
(``mask_proportion``), ``time_mask_block`` (``mask_consecutive_min`` = ``max``), ``freq_mask_max``
(``mask_frequency``), ``noise_prob`` (``noise_proportion``); the learning rate from the plugin's ``run_defaults``
(2e-4, as the reference). Everything else is the reference's TERA config: GELU, post-norm, LayerNorm eps 1e-12,
``mask_allow_overlap: True``, L1 loss, no fp16, gradient clipping 5.0.

Differences that remain:

- Where the masking runs: in the reference it is the data set's ``__getitem__``, in 8 DataLoader worker processes
  that overlap the GPU step; here it runs in the timed closure, serially, as part of the step (the host-side
  cost of a reference step, not its wall-clock cost with a prefetching loader).
- Gradient accumulation: the reference's runner accumulates 4 batches of 8 clips per optimizer step
  (``gradient_accumulate_steps: 4``); here every step is one forward/backward on our batch (32 clips by default)
  and one optimizer step, as ours.
- Optimizer: the reference's ``AdamW_with_schedule``, s3prl's ``Lamb(adam=True, correct_bias=True)``: a Python
  loop over parameters with per-parameter norms and a ``weight_norm == 0 or adam_norm == 0`` test (a host sync per
  parameter on CUDA), weight decay 0.01 except biases and LayerNorms, its ``warmup_linear`` schedule over the
  config's 1,000,000 steps with 7 % warm-up (so the rate is near zero during a benchmark; it does not change the
  time). Ours: ``torch.optim.AdamW`` (fused on CUDA), weight decay 0.01 on every parameter.
- Blocks: the reference computes attention with explicit ``matmul`` / softmax / dropout and an additive
  ``-10000`` padding mask, separate ``query``/``key``/``value`` Linears and a TF-style LayerNorm written as
  element-wise ops, and GELU as its ``erf`` formula; ours uses one fused ``qkv`` Linear, SDPA with a boolean
  key-padding mask, ``nn.LayerNorm`` (eps 1e-5) and ``nn.GELU``. Ours also applies dropout on the feed-forward
  hidden layer, which the reference does not. Parameter counts are equal; the reference initialises every Linear
  from N(0, 0.02).
- Positions: the reference's sinusoidal table lives on the host (``lru_cache``, 3000 rows) and is copied to the
  device every step; ours is a device buffer.
- Masking details (same scheme, per clip): the reference draws ``round(0.15 L / 7)`` time blocks with no minimum
  (a clip under ~24 frames may get none), starts in ``[0, L - 8]``, replaces with ``round(...)`` other random
  blocks of the clip, draws the frequency start in ``[0, F - w - 1]``, and drops clips left with nothing altered
  (``valid_batchid``); ours draws at least one block, starts in ``[0, L - 7]`` and ``[0, F - w]``, keeps every
  clip. Lengths: the reference counts the frames whose features do not sum to 0, which on our zero-padded
  features are the clip's frames.
- Loss: L1 over ``masked_select`` (dynamic shapes) in the reference; ours a weighted mean over the same positions.
- Inputs: our batch (FSDD log-mel, 100-frame crops by default) held on the host as the reference's data set is;
  the reference trains on LibriSpeech with 1500-frame sequences and bucketing. Its logging step (every 50,000
  steps: spectrogram plots) never falls in a benchmark.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RUNNER_TOTAL_STEPS = 1_000_000
"""``runner.total_steps`` of ``pretrain/tera/config_runner.yaml``: the horizon of the optimizer's LR schedule."""
GRADIENT_CLIPPING = 5.0
"""``runner.gradient_clipping`` of ``pretrain/tera/config_runner.yaml``."""

_LOADED: dict[Path, types.SimpleNamespace] = {}


def _stub(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__path__ = []  # a package, so that dotted stand-ins below it resolve
    module.__dict__.update(attrs)
    return module


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_reference(ref_dir: Path) -> types.SimpleNamespace:
    """The reference's ``model``, ``task``, ``expert`` and ``optimizers`` modules, loaded by file path."""
    root = Path(ref_dir).resolve() / "s3prl"
    if root in _LOADED:
        return _LOADED[root]
    if not (root / "upstream" / "mockingjay" / "model.py").is_file():
        raise FileNotFoundError(f"{ref_dir} is not an s3prl checkout (no s3prl/upstream/mockingjay/model.py)")
    model = _load("_s3prl_mockingjay_model", root / "upstream" / "mockingjay" / "model.py")
    task = _load("_s3prl_mockingjay_task", root / "pretrain" / "mockingjay" / "task.py")
    optimizers = _load("_s3prl_optimizers", root / "optimizers.py")
    # pretrain_expert.py imports by the names s3prl's own runner puts on sys.path: give it the model module loaded
    # above, and empty stand-ins for the data sets, feature extractors and plotting it does not use here (they
    # pull torchaudio, librosa, matplotlib); the stand-ins are removed again once it is loaded
    stand_ins = {
        "pretrain": _stub("pretrain"),
        "pretrain.mockingjay": _stub("pretrain.mockingjay"),
        "pretrain.mockingjay.dataset": _stub(
            "pretrain.mockingjay.dataset", KaldiAcousticDataset=None, OnlineAcousticDataset=None
        ),
        "upstream": _stub("upstream"),
        "upstream.mockingjay": _stub("upstream.mockingjay"),
        "upstream.mockingjay.model": model,
        "upstream.baseline": _stub("upstream.baseline"),
        "upstream.baseline.extracter": _stub("upstream.baseline.extracter", get_extracter=None),
        "upstream.baseline.preprocessor": _stub("upstream.baseline.preprocessor", get_preprocessor=None),
        "utility": _stub("utility"),
        "utility.audio": _stub("utility.audio", plot_spectrogram_to_numpy=None),
    }
    if importlib.util.find_spec("yaml") is None:
        stand_ins["yaml"] = _stub("yaml")
    added = [name for name in stand_ins if name not in sys.modules]
    sys.modules.update({name: stand_ins[name] for name in added})
    try:
        expert = _load("_s3prl_mockingjay_pretrain_expert", root / "pretrain" / "mockingjay" / "pretrain_expert.py")
    finally:
        for name in added:
            sys.modules.pop(name, None)
    # Lamb.step uses the deprecated add_(Number, Tensor) / addcmul_(Number, Tensor, Tensor) overloads
    warnings.filterwarnings("ignore", message="This overload of ", module="_s3prl_optimizers")
    _LOADED[root] = types.SimpleNamespace(model=model, task=task, expert=expert, optimizers=optimizers)
    return _LOADED[root]


def reference_configs(cfg: Any) -> dict[str, dict[str, Any]]:
    """The ``transformer`` and ``task`` sections of ``pretrain/tera/config_model.yaml`` at our sizes."""
    transformer = {
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.heads,
        "hidden_act": "gelu",
        "intermediate_size": cfg.ff_dim,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "share_layer": False,
        "pre_layer_norm": False,
    }
    task = {
        "loss": "L1",
        "sequence_length": 1500,
        "position_encoding_size": cfg.dim,
        "mask_proportion": cfg.time_mask_ratio,
        "mask_consecutive_min": cfg.time_mask_block,
        "mask_consecutive_max": cfg.time_mask_block,
        "mask_allow_overlap": True,
        "mask_bucket_ratio": 1.5,
        "mask_frequency": cfg.freq_mask_max,
        "noise_proportion": cfg.noise_prob,
    }
    return {"transformer": transformer, "task": task}


def _lr_default() -> float:
    from ssl_domains_audio.plugin import TERAPlugin

    return TERAPlugin.run_defaults["optim"]["lr"]


def reference_step(
    ref_dir: Path, cfg: Any, batch: dict[str, torch.Tensor], *, lr: float | None = None
) -> Callable[[], torch.Tensor]:
    """Return a closure running one full reference training step (host masking, transfers, forward, L1 loss,
    backward, clipping, optimizer step, ``zero_grad``) on the fixed batch; it returns the loss tensor.

    ``cfg`` is our ``TERAConfig``; ``batch`` one of our training batches (``features`` float32 ``[B, T, F]``,
    zero-padded), on the device the reference model is put on. ``lr`` defaults to the plugin's ``run_defaults``.
    """
    ref = import_reference(ref_dir)
    lr = _lr_default() if lr is None else lr
    features = batch["features"]
    device = features.device
    configs = reference_configs(cfg)

    model_config = ref.model.TransformerConfig(configs["transformer"])
    model_config.loss = configs["task"]["loss"]
    model = ref.expert.TransformerForMaskedAcousticModel(model_config, cfg.num_mel_bins, output_dim=None)
    model.to(device).train()
    # the expert without its __init__ (which builds the LibriSpeech DataLoader): what its forward() reads
    expert = ref.expert.UpstreamPretrainExpert.__new__(ref.expert.UpstreamPretrainExpert)
    torch.nn.Module.__init__(expert)
    expert.model, expert.device, expert.multi_gpu = model, device, False
    # runner._get_optimizer: get_optimizer([upstream.model], total_steps, config["optimizer"])
    optimizer = ref.optimizers.get_optimizer(
        [model], RUNNER_TOTAL_STEPS, {"name": "AdamW_with_schedule", "lr": lr, "warmup_proportion": 0.07}
    )

    # the data set's padded batch (pad_sequence of the clips' features), on the host as the reference loads it
    host_features = features.detach().float().cpu()
    task_config = configs["task"]

    def step() -> torch.Tensor:
        # KaldiAcousticDataset.__getitem__: the masking mutates its input, a freshly padded batch each time
        data = ref.task.generate_masked_acoustic_model_data(spec=(host_features.clone(),), config=task_config)
        # global_step 1: never a logging step (those plot spectrograms every 50,000 steps)
        loss, _ = expert(data, records={}, global_step=1, log_step=50_000)
        loss.backward()
        loss.item()  # the runner's all_loss += loss.item(): a host sync
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRADIENT_CLIPPING)
        if not math.isnan(grad_norm):
            optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    step.modules = {"model": model}
    return step
