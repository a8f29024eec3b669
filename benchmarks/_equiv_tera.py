"""Our TERA against s3prl's (``upstream/mockingjay/model.py``, ``pretrain/mockingjay/{task,pretrain_expert}.py``,
``optimizers.py``), for ``benchmarks/equivalence.py --plugin tera``.

- Weights: the reference's ``TransformerForMaskedAcousticModel`` is built at a small configuration (3 layers x 48,
  4 heads, dropout 0) with its own initialisation, and its ``Transformer``/``SpecHead`` state dicts are copied
  into ours through ``ssl_domains_audio.weights_tera.to_ours`` (the key map documented there).
- Batch and alterations: 8 FSDD clips (``datasets/fsdd``) as our datamodule gives them (log-mel, per-utterance
  CMVN, zero-padded); the reference's own ``generate_masked_acoustic_model_data`` alters them (time blocks with
  its mask/replace/keep dice, frequency block), and its ``spec_masked`` and ``mask_label`` are fed to ours
  (``TERAObjective.loss``).
- Measured in float64: the input representation and every layer's output (s3prl's ``all_encoder_layers``), the
  L1 loss, every gradient, and 5 optimiser steps, ours with the core's AdamW (no decay on biases and norms) and
  the reference with its ``AdamW_with_schedule`` (s3prl's ``Lamb(adam=True, correct_bias=True)``), both under a
  7 % linear warm-up of a 100-step horizon.
- Import: a checkpoint saved as s3prl's runner saves it (``all_states`` with ``Optimizer``, ``Step``, ``Args``,
  ``Config``, then ``add_state_to_save``; ``torch.save``), imported with ``ssl_domains.transfer.import_weights``,
  embedded by our ``frame_embeddings``, against the reference's ``TransformerModel`` on the same features
  (float32). Our export is loaded back by the reference's ``UpstreamPretrainExpert.load_model``.

No reference-quirk switch is needed: once LayerNorm eps, the init and the FFN dropout follow s3prl (our
defaults), the two compute the same function. Lamb's step differs from ``torch.optim.AdamW`` in two places, which
the 5-step figure shows: its eps is added to ``sqrt(v)`` before the bias correction (``optimizers.py``
L615-L617), and its weight decay is scaled by the bias correction (L620, L633).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from _tera_ref import import_reference, reference_configs

REFERENCE_COMMIT = "ec8064b5889f81ca460fbe2c094ce576a6f120b7"
DATA = Path(__file__).resolve().parents[1] / "datasets" / "fsdd"
SIZES = {"dim": 48, "depth": 3, "heads": 4, "ff_dim": 96, "dropout": 0.0, "batch_size": 8}
STEPS, HORIZON = 5, 100


def _clips(root: Path, n: int = 8) -> Path:
    """A folder of ``n`` FSDD clips of different lengths (two speakers)."""
    root.mkdir(parents=True, exist_ok=True)
    for wav in sorted(DATA.glob("*.wav"))[:: max(1, 300 // n)][:n]:
        shutil.copy(wav, root / wav.name)
    return root


def _setup(data: Path) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    from ssl_domains import registry
    from ssl_domains.run import resolve_config

    plugin = registry.load("tera")
    cfg = resolve_config(plugin, data, [{"tera": SIZES}])
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.predict_dataloader()))
    return plugin, cfg, batch


def _reference_model(ref: Any, cfg: Any) -> torch.nn.Module:
    configs = reference_configs(cfg)
    model_config = ref.model.TransformerConfig(configs["transformer"])
    model_config.loss = "L1"
    return ref.expert.TransformerForMaskedAcousticModel(model_config, cfg.num_mel_bins, output_dim=None)


def _ours_from(plugin: Any, cfg: Any, dm: Any, reference: torch.nn.Module) -> torch.nn.Module:
    from ssl_domains_audio.weights_tera import to_ours

    ours = plugin.model(cfg, dm)
    ours.load_state_dict(
        to_ours(reference.Transformer.state_dict(), reference.SpecHead.state_dict(), cfg.depth), strict=True
    )
    return ours


def _alterations(ref: Any, cfg: Any, features: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    random.seed(seed)
    torch.manual_seed(seed)
    task = reference_configs(cfg)["task"]
    spec_masked, pos_enc, mask_label, attn_mask, spec_target = ref.task.generate_masked_acoustic_model_data(
        spec=(features.clone(),), config=task
    )
    if spec_masked.shape[0] != features.shape[0]:
        raise RuntimeError("the reference dropped a clip with nothing altered; pick another seed")
    return spec_masked.double(), pos_enc.double(), mask_label, attn_mask.double(), spec_target.double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _one_step(ref: Any, cfg: Any, reference: torch.nn.Module, ours: torch.nn.Module, batch: Any) -> dict[str, Any]:
    from ssl_domains_audio.objective import TERAObjective
    from ssl_domains_audio.weights_tera import to_ours

    spec_masked, pos_enc, mask_label, attn_mask, target = _alterations(ref, cfg, batch["features"], seed=0)
    lengths = attn_mask.sum(1).long()
    b = spec_masked.shape[0]
    theirs = reference.Transformer(spec_masked, pos_enc.expand(b, -1, -1), attn_mask, output_all_encoded_layers=True)
    mine = ours.encode(spec_masked, lengths)
    layer_diff = [float((m - t).detach().abs().max()) for m, t in zip(mine, theirs, strict=True)]
    ref_loss, _ = reference(spec_masked, pos_enc.expand(b, -1, -1), mask_label, attn_mask, target)
    our_loss = TERAObjective.loss(ours, target, spec_masked, mask_label, lengths)["loss"]
    ref_loss.backward()
    our_loss.backward()
    ref_grads = to_ours(
        {k: p.grad for k, p in reference.Transformer.named_parameters()},
        {k: p.grad for k, p in reference.SpecHead.named_parameters()},
        cfg.depth,
    )
    grads = {k: _rel(p.grad, ref_grads[k]) for k, p in ours.named_parameters()}
    worst = max(grads, key=grads.get)
    return {
        "output_max_abs_diff": max(layer_diff),
        "layer_max_abs_diff": layer_diff,
        "loss_ours": float(our_loss.detach()),
        "loss_reference": float(ref_loss.detach()),
        "loss_rel_diff": abs(float(our_loss.detach()) - float(ref_loss.detach())) / abs(float(ref_loss.detach())),
        "grad_max_rel_diff": grads[worst],
        "grad_worst_parameter": worst,
        "parameters_compared": len(grads),
        "altered_share": float(mask_label.double().mean()),
    }


def _steps(ref: Any, plugin: Any, cfg: Any, dm: Any, batch: Any) -> dict[str, Any]:
    from ssl_domains.config import OptimConfig, from_mapping
    from ssl_domains.module import build_optimizer, warmup_cosine
    from ssl_domains_audio.objective import TERAObjective

    torch.manual_seed(1)
    reference = _reference_model(ref, cfg).double()
    ours = _ours_from(plugin, cfg, dm, reference).double()
    optim_cfg = from_mapping(OptimConfig, dict(plugin.run_defaults["optim"]), "optim")
    ref_opt = ref.optimizers.get_optimizer(
        [reference], HORIZON, {"name": "AdamW_with_schedule", "lr": optim_cfg.lr, "warmup_proportion": 0.07}
    )
    our_opt = build_optimizer(list(ours.parameters()), optim_cfg)
    factor = warmup_cosine(HORIZON, round(0.07 * HORIZON), optim_cfg.schedule, optim_cfg.min_lr_ratio)
    our_sched = torch.optim.lr_scheduler.LambdaLR(our_opt, factor)
    losses_ref, losses_ours = [], []
    for step in range(STEPS):
        spec_masked, pos_enc, mask_label, attn_mask, target = _alterations(ref, cfg, batch["features"], seed=step)
        b = spec_masked.shape[0]
        ref_loss, _ = reference(spec_masked, pos_enc.expand(b, -1, -1), mask_label, attn_mask, target)
        our_loss = TERAObjective.loss(ours, target, spec_masked, mask_label, attn_mask.sum(1).long())["loss"]
        ref_loss.backward()
        our_loss.backward()
        ref_opt.step()
        our_opt.step()
        our_sched.step()
        ref_opt.zero_grad()
        our_opt.zero_grad()
        losses_ref.append(float(ref_loss))
        losses_ours.append(float(our_loss))
    rel = [abs(a - b) / abs(b) for a, b in zip(losses_ours, losses_ref, strict=True)]
    return {"steps_loss_max_rel_diff": max(rel), "steps_losses_ours": losses_ours, "steps_losses_reference": losses_ref}


def _import(ref: Any, cfg: Any, data: Path, work: Path) -> dict[str, Any]:
    from ssl_domains import load_encoder, registry
    from ssl_domains.transfer import export_weights, import_weights

    torch.manual_seed(2)
    reference = _reference_model(ref, cfg)
    # the expert as s3prl's runner holds it (its __init__ builds the LibriSpeech loader: skipped)
    expert = ref.expert.UpstreamPretrainExpert.__new__(ref.expert.UpstreamPretrainExpert)
    torch.nn.Module.__init__(expert)
    expert.model, expert.multi_gpu = reference, False
    expert.upstream_config = reference_configs(cfg)
    optimizer = ref.optimizers.get_optimizer([reference], HORIZON, {"name": "AdamW_with_schedule", "lr": 2e-4})
    all_states = {  # pretrain/runner.py L250-L256, then the expert's add_state_to_save
        "Optimizer": optimizer.state_dict(),
        "Step": 0,
        "Args": argparse.Namespace(upstream="tera", expdir=str(work)),
        "Config": {"runner": {"total_steps": HORIZON}},
    }
    all_states = expert.add_state_to_save(all_states)
    ckpt = work / "states-0.ckpt"
    torch.save(all_states, ckpt)

    run = import_weights(registry.load("tera"), ckpt, data, work / "imported", layers=[{"tera": {"batch_size": 8}}])
    model, dm = load_encoder(run, data)
    batch = next(iter(dm.predict_dataloader()))
    x, lengths = batch["features"], batch["length"]
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    attn = valid.float()
    pos_enc = ref.task.fast_position_encoding(x.shape[1], cfg.dim).expand(x.shape[0], -1, -1)
    reference.eval()
    with torch.no_grad():
        theirs = reference.Transformer(x, pos_enc, attn, output_all_encoded_layers=True)
        mine = model.encode(x, lengths)
        diff = max(float((m - t)[valid].abs().max()) for m, t in zip(mine, theirs, strict=True))
        frames = float((model.frame_embeddings(batch) - theirs[-1])[valid].abs().max())

    exported = export_weights(run, "s3prl", work / "exported.ckpt")
    back = _reference_model(ref, cfg)
    expert.model = back
    expert.load_model(torch.load(exported, map_location="cpu", weights_only=True))
    back.eval()
    with torch.no_grad():
        again = back.Transformer(x, pos_enc, attn, output_all_encoded_layers=False)
    return {
        "import_max_abs_diff": diff,
        "import_frame_embeddings_max_abs_diff": frames,
        "export_max_abs_diff": float((again - theirs[-1])[valid].abs().max()),
    }


def compare(reference: Path) -> dict[str, Any]:
    """The TERA figures of ``benchmarks/equivalence.py`` (see the module docstring)."""
    ref = import_reference(reference)
    work = Path(tempfile.mkdtemp(prefix="tera_equiv_"))
    try:
        data = _clips(work / "clips")
        plugin, cfg, batch = _setup(data)
        dm = plugin.datamodule(cfg.method, cfg.data)
        dm.setup("fit")
        torch.manual_seed(0)
        reference_model = _reference_model(ref, cfg.method).double()
        ours = _ours_from(plugin, cfg.method, dm, reference_model).double()
        reference_model.eval()
        ours.eval()  # dropout is 0 anyway; eval keeps nothing stochastic
        batch64 = {**batch, "features": batch["features"].double()}
        result = _one_step(ref, cfg.method, reference_model, ours, batch64)
        result.update(_steps(ref, plugin, cfg.method, dm, batch64))
        result.update(_import(ref, cfg.method, data, work))
        result.update(
            config={k: getattr(cfg.method, k) for k in (*SIZES, "num_mel_bins", "layer_norm_eps")},
            clips=int(batch["features"].shape[0]),
            frames=int(batch["features"].shape[1]),
        )
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
