"""Our SSAST against the reference (YuanGongND/ssast @ a1a3eec, ``src/models/ast_models.py``,
``src/traintest_mask.py``), for ``benchmarks/equivalence.py --plugin ssast``.

The reference is loaded by path (``_ssast_ref.import_reference``: ``ast_models.py`` alone, with empty stand-ins
for torchvision and matplotlib, which timm 0.4.5 and the file import but never use here). It needs timm 0.4.5,
a pure-Python wheel that is never installed into the project's environment: when ``timm`` is not importable,
the directory ``$SSAST_TIMM`` (default ``/tmp/timm045``, made by ``pip install --no-deps --target /tmp/timm045
timm==0.4.5``) is put on ``sys.path`` first.

- Weights: the reference's pretraining ``ASTModel`` at a small size (dim 24, 2 layers, 2 heads, feed-forward 48,
  dropout 0, 16 × 16 patches on 128 bins × 64 frames = 8 × 4 patches) with its own initialisation (timm's
  factory answers its DeiT request at these sizes: ``_ssast_ref.deit_at_sizes``), copied into ours through
  ``ssl_domains_audio.weights_ssast.from_reference`` (the key map documented there; the same code as
  ``ssl-domains import``). Both are then cast to float64.
- Batch: 4 FSDD clips (``datasets/fsdd``) as our datamodule gives them (Kaldi fbank, normalised), each repeated
  along time to 64 frames, so no clip has padding (the reference attends over padding; ours masks it out).
- Masks: the reference's own ``gen_maskid_patch`` (cluster masking; ``gen_maskid_frame`` in frame mode) draws
  16 of the 32 patches per clip and pass; the draws are fed to the reference (its ``gen_maskid_*`` replaced on
  the instance by the list) and, as boolean masks, to ours (``SSASTObjective.mask``).
- Quirk switches on: ``nce_softmax: reference`` (its ``log_softmax(dim=-1)`` on ``targets @ predictions.T``) and
  ``forward_passes: 2`` (``pretrain_mpc`` with mask A, ``pretrain_mpg`` with mask B); loss ``nce + 10 · mse``.
  Also reported with the switches off (our defaults, the paper): ``paper_mode_*``.
- float64: the reference allocates its InfoNCE and MSE buffers with ``torch.empty(...).float()``
  (``mpc``, ``mpg``) and accumulates the InfoNCE in ``torch.tensor(0.0)``; while it runs, the default dtype is
  float64 and its module's ``torch.empty`` returns tensors whose ``.float()`` keeps float64 (``_float64``).
- 5 steps: each side with its own Adam at the reference's settings (``traintest_mask.py``: ``torch.optim.Adam(
  trainables, lr, weight_decay=5e-7, betas=(0.95, 0.999))``; ours ``ssl_domains.module.build_optimizer`` on the
  plugin's ``run_defaults``, lr 5e-4), constant rate, fresh reference masks every step.
- Import: a random-init SSAST-Tiny (the reference's real ``model_size="tiny"``: DeiT-tiny, 12 layers, 192 wide)
  in pretraining mode on 128 × 128 inputs, wrapped in ``torch.nn.DataParallel`` and saved with
  ``torch.save(audio_model.state_dict(), path)`` as ``trainmask`` saves its from-scratch model
  (``traintest_mask.py`` L35-L36, L64). It goes through ``ssl_domains.transfer.import_weights`` into a run folder,
  ``ssl_domains.load_encoder`` loads it, and ``model.embed`` is compared with what the reference does with a
  released file: its fine-tuning ``ASTModel(pretrain_stage=False, load_pretrained_mdl_path=path)`` on
  ``task="ft_avgtok"``, with ``mlp_head`` replaced by ``Identity`` (the mean patch token before the classifier),
  on 64-frame inputs (the reference cuts the table's centre columns) and 128-frame ones (the whole table);
  patch and frame variants; in float32 (as users run it) and float64. ``import_left_crop_max_abs_diff`` shows
  what the left slice would give instead. Export: the imported run's weights perturbed, saved, written with
  ``ssl_domains.transfer.export_weights``, loaded by the same reference fine-tuning code (and strictly by
  ``nn.DataParallel(ASTModel(pretrain_stage=True)).load_state_dict``), outputs compared.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _ssast_ref import REFERENCE_MSE_WEIGHT, deit_at_sizes, import_reference, reference_model

REFERENCE_COMMIT = "a1a3eecb94731e226308a6812f2fbf268d789caf"
DATA = Path(__file__).resolve().parents[1] / "datasets" / "fsdd"
SIZES = {"dim": 24, "depth": 2, "heads": 2, "ff_dim": 48, "dropout": 0.0, "mask_ratio": 0.5, "batch_size": 4}
FRAMES, CLIPS, STEPS = 64, 4, 5
TINY = {"dim": 192, "depth": 2, "heads": 3, "ff_dim": 768, "dropout": 0.0}  # DeiT-tiny blocks, 2 of its 12
PRETRAIN_FRAMES = 128  # the import check's pretraining input_tdim (the released models: 1024)


class _KeepFloat64(torch.Tensor):
    """What the reference's ``torch.empty`` returns while ``_float64`` is active: ``.float()`` keeps float64."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def float(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)


class _TorchWithFloat64Buffers:
    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def empty(*args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.empty(*args, **kwargs).as_subclass(_KeepFloat64)


@contextlib.contextmanager
def _float64(ast_models: Any) -> Iterator[None]:
    previous, original = torch.get_default_dtype(), ast_models.torch
    torch.set_default_dtype(torch.float64)
    ast_models.torch = _TorchWithFloat64Buffers()
    try:
        yield
    finally:
        ast_models.torch = original
        torch.set_default_dtype(previous)


def _clips(root: Path, n: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for wav in sorted(DATA.glob("*.wav"))[:: max(1, 300 // n)][:n]:
        shutil.copy(wav, root / wav.name)
    return root


def _features(dm: Any, frames: int, clips: int = CLIPS) -> torch.Tensor:
    """``[clips, frames, bins]``: the datamodule's normalised features, each clip repeated along time."""
    out = []
    for i in range(clips):
        f = dm.features_of(i)
        out.append(f.repeat(math.ceil(frames / f.shape[0]), 1)[:frames])
    return torch.stack(out)


def _setup(data: Path, mode: str) -> tuple[Any, Any, Any]:
    from ssl_domains import registry
    from ssl_domains.run import resolve_config

    plugin = registry.load("ssast")
    cfg = resolve_config(plugin, data, [{"ssast": {**SIZES, "mode": mode, "max_frames": FRAMES}}])
    dm = plugin.datamodule(cfg.method, cfg.data)
    dm.setup("fit")
    return plugin, cfg.method, dm


def _ours_from(plugin: Any, cfg: Any, dm: Any, reference: torch.nn.Module) -> torch.nn.Module:
    from ssl_domains.transfer import load_strict
    from ssl_domains_audio.weights_ssast import from_reference

    ours = plugin.model(cfg, dm)
    load_strict(ours, from_reference(reference.state_dict()), Path("<reference model>"))
    return ours


def _draw_masks(reference: Any, cluster: bool, count: int, seed: int, clips: int = CLIPS) -> list[torch.Tensor]:
    """``clips`` index draws of the reference's own mask generator."""
    random.seed(seed)
    cls = type(reference)
    gen = cls.gen_maskid_patch if cluster else cls.gen_maskid_frame
    return [gen(reference, reference.num_patches, count) for _ in range(clips)]


def _as_mask(indices: list[torch.Tensor], patches: int) -> torch.Tensor:
    mask = torch.zeros(len(indices), patches, dtype=torch.bool)
    for row, index in enumerate(indices):
        mask[row, index] = True
    return mask


def _objective(cfg: Any, masks: list[torch.Tensor]) -> Any:
    """Our objective with the given boolean masks, one per ``mask`` call, in order."""
    from ssl_domains_audio.plugin import SSASTPlugin

    objective = SSASTPlugin().objective(cfg)
    objective.mask = lambda model, valid, frames: masks.pop(0)
    return objective


def _reference_loss(ast_models: Any, model: Any, x: torch.Tensor, passes: list[list[torch.Tensor]], count: int,
                    cluster: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The reference's ``pretrain_joint`` loss (``traintest_mask.py``): mpc with ``passes[0]``, mpg with ``[1]``."""
    queue = [index for draws in passes for index in draws]
    model.gen_maskid_patch = model.gen_maskid_frame = lambda *args, **kwargs: queue.pop(0)
    try:
        with _float64(ast_models):
            _, nce = model(x, "pretrain_mpc", mask_patch=count, cluster=cluster)
            mse = model(x, "pretrain_mpg", mask_patch=count, cluster=cluster)
    finally:
        del model.gen_maskid_patch, model.gen_maskid_frame
    assert not queue
    return nce + REFERENCE_MSE_WEIGHT * mse, nce, mse


def _grads_as_ours(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    from ssl_domains_audio.weights_ssast import from_reference

    grads = {
        k: p.detach() if k.startswith("p_input") else (p.grad if p.grad is not None else torch.zeros_like(p))
        for k, p in reference.named_parameters()
    }
    return dict(from_reference(grads).state_dict)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


ZERO_GRADIENT = 1e-12
"""A parameter whose gradient is below this share of the largest one on both sides has an exact-zero gradient
up to rounding, and a ratio of two rounding noises says nothing: it is listed instead (``grad_zero_parameters``)."""


def _grad_figures(ours: torch.nn.Module, ref_grads: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict]:
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    zero, rel = {}, {}
    for name, p in ours.named_parameters():
        mine, theirs = float(p.grad.abs().max()), float(ref_grads[name].abs().max())
        if max(mine, theirs) <= ZERO_GRADIENT * scale:
            zero[name] = [mine, theirs]
        else:
            rel[name] = _rel(p.grad, ref_grads[name])
    return rel, zero


def _one_step(ast_models: Any, cfg: Any, reference: Any, ours: Any, x: torch.Tensor, prefix: str = "") -> dict:
    from dataclasses import replace

    cluster, count = cfg.mode == "patch", round(cfg.mask_ratio * reference.num_patches)
    a = _draw_masks(reference, cluster, count, seed=0)
    b = _draw_masks(reference, cluster, count, seed=1)
    batch = {"features": x, "length": torch.full((x.shape[0],), x.shape[1])}
    patches = reference.num_patches

    # every layer's output, from the reference's first (mpc) pass, against our encoder under the same mask
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in [*reference.v.blocks,
                                                                                        reference.v.norm]]  # fmt: skip
    try:
        ref_loss, ref_nce, ref_mse = _reference_loss(ast_models, reference, x, [a, b], count, cluster)
    finally:
        for hook in hooks:
            hook.remove()
    theirs = [*captured[: cfg.depth - 1], captured[cfg.depth]]  # blocks 0 .. L-2, then the final norm
    theirs = [t[:, 2:] for t in theirs]  # patch tokens (ours returns those)
    layers, _ = ours.encode(x, batch["length"], _as_mask(a, patches))
    layer_diff = [float((m - t).detach().abs().max()) for m, t in zip(layers, theirs, strict=True)]

    quirks = replace(cfg, nce_softmax="reference", forward_passes=2)
    out = _objective(quirks, [_as_mask(a, patches), _as_mask(b, patches)])(ours, batch)
    ref_loss.backward()
    out["loss"].backward()
    ref_grads = _grads_as_ours(reference)
    grads, zero = _grad_figures(ours, ref_grads)
    worst = max(grads, key=grads.get)
    ours.zero_grad()

    paper = replace(cfg, nce_softmax="paper", forward_passes=1)
    out_paper = _objective(paper, [_as_mask(a, patches)])(ours, batch)
    out_paper["loss"].backward()
    paper_grads = max(_rel(p.grad, ref_grads[k]) for k, p in ours.named_parameters() if k not in zero)
    ours.zero_grad()
    reference.zero_grad()

    def rel(ours_value: torch.Tensor, ref_value: torch.Tensor) -> float:
        return abs(float(ours_value.detach()) - float(ref_value.detach())) / abs(float(ref_value.detach()))

    return {
        f"{prefix}output_max_abs_diff": max(layer_diff),
        f"{prefix}layer_max_abs_diff": layer_diff,
        f"{prefix}loss_ours": float(out["loss"].detach()),
        f"{prefix}loss_reference": float(ref_loss.detach()),
        f"{prefix}loss_rel_diff": rel(out["loss"], ref_loss),
        f"{prefix}nce_rel_diff": rel(out["nce"], ref_nce),
        f"{prefix}mse_rel_diff": rel(out["mse"], ref_mse),
        f"{prefix}grad_max_rel_diff": grads[worst],
        f"{prefix}grad_worst_parameter": worst,
        f"{prefix}parameters_compared": len(grads),
        f"{prefix}grad_zero_parameters": zero,
        f"{prefix}paper_mode_loss": float(out_paper["loss"].detach()),
        f"{prefix}paper_mode_loss_rel_diff": rel(out_paper["loss"], ref_loss),
        f"{prefix}paper_mode_nce_rel_diff": rel(out_paper["nce"], ref_nce),
        f"{prefix}paper_mode_grad_max_rel_diff": paper_grads,
        f"{prefix}masked_per_clip": count,
        f"{prefix}patches_per_clip": patches,
    }


def _steps(ast_models: Any, ref_dir: Path, plugin: Any, cfg: Any, dm: Any, x: torch.Tensor) -> dict[str, Any]:
    from dataclasses import replace

    from ssl_domains.config import OptimConfig, from_mapping
    from ssl_domains.module import build_optimizer

    torch.manual_seed(1)
    reference = reference_model(ref_dir, cfg, FRAMES).double()
    ours = _ours_from(plugin, cfg, dm, reference).double()
    optim = from_mapping(OptimConfig, dict(plugin.run_defaults["optim"]), "optim")
    trainables = [p for p in reference.parameters() if p.requires_grad]  # traintest_mask.py L40-L44
    ref_opt = torch.optim.Adam(trainables, optim.lr, weight_decay=optim.weight_decay, betas=optim.betas)
    our_opt = build_optimizer(list(ours.parameters()), optim)
    quirks = replace(cfg, nce_softmax="reference", forward_passes=2)
    cluster, count = cfg.mode == "patch", round(cfg.mask_ratio * reference.num_patches)
    batch = {"features": x, "length": torch.full((x.shape[0],), x.shape[1])}
    losses_ref, losses_ours = [], []
    for step in range(STEPS):
        a = _draw_masks(reference, cluster, count, seed=100 + 2 * step)
        b = _draw_masks(reference, cluster, count, seed=101 + 2 * step)
        ref_loss, _, _ = _reference_loss(ast_models, reference, x, [a, b], count, cluster)
        patches = reference.num_patches
        our_loss = _objective(quirks, [_as_mask(a, patches), _as_mask(b, patches)])(ours, batch)["loss"]
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        our_opt.zero_grad()
        our_loss.backward()
        our_opt.step()
        losses_ref.append(float(ref_loss.detach()))
        losses_ours.append(float(our_loss.detach()))
    rel = [abs(a - b) / abs(b) for a, b in zip(losses_ours, losses_ref, strict=True)]
    return {"steps_loss_max_rel_diff": max(rel), "steps_losses_ours": losses_ours, "steps_losses_reference": losses_ref}


def _reference_finetune(ast_models: Any, path: Path, mode: str, frames: int) -> torch.nn.Module:
    """What the reference does with a released file: its fine-tuning ASTModel, classifier left out."""
    patch = (16, 16) if mode == "patch" else (128, 2)
    with deit_at_sizes(_Sizes(**TINY)):  # timm's DeiT-tiny factory, 2 blocks
        model = ast_models.ASTModel(
            label_dim=2, fshape=patch[0], tshape=patch[1], fstride=patch[0], tstride=patch[1], input_fdim=128,
            input_tdim=frames, model_size="tiny", pretrain_stage=False, load_pretrained_mdl_path=str(path),
        )  # fmt: skip
    model.mlp_head = torch.nn.Identity()  # finetuningavgtok's mean patch token, before the classifier
    return model.eval()


class _Sizes:
    def __init__(self, **sizes: Any) -> None:
        self.__dict__.update(sizes)


def _compare_embed(ours: Any, theirs: torch.nn.Module, x: torch.Tensor) -> float:
    """Our ``embed`` against the reference's ``ft_avgtok``; in float64 the mean of our last layer instead (the
    same pooling: ``embed`` casts its states to float32, for autocast)."""
    batch = {"features": x, "length": torch.full((x.shape[0],), x.shape[1])}
    with torch.no_grad():
        mine = ours.encode(x, batch["length"])[0][-1].mean(1) if x.dtype == torch.float64 else ours.embed(batch)
        return float((mine - theirs(x, task="ft_avgtok")).abs().max())


def _import(ast_models: Any, mode: str, data: Path, work: Path) -> dict[str, Any]:
    from ssl_domains import load_encoder, registry
    from ssl_domains.checkpoint import save_weights
    from ssl_domains.run import WEIGHTS_FILE
    from ssl_domains.transfer import export_weights, import_weights

    patch = (16, 16) if mode == "patch" else (128, 2)
    torch.manual_seed(2)
    with deit_at_sizes(_Sizes(**TINY)):
        pretrain = ast_models.ASTModel(
            fshape=patch[0], tshape=patch[1], fstride=patch[0], tstride=patch[1], input_fdim=128,
            input_tdim=PRETRAIN_FRAMES, model_size="tiny", pretrain_stage=True,
        )  # fmt: skip
    audio_model = torch.nn.DataParallel(pretrain)  # traintest_mask.py L35-L36
    ckpt = work / f"ssast_{mode}_random.pth"
    torch.save(audio_model.state_dict(), ckpt)  # traintest_mask.py L64 (the from-scratch model)

    plugin = registry.load("ssast")
    run = import_weights(plugin, ckpt, data, work / f"imported_{mode}", overrides=["ssast.batch_size=4"])
    ours, dm = load_encoder(run, data)
    result: dict[str, Any] = {}
    for frames in (PRETRAIN_FRAMES // 2, PRETRAIN_FRAMES):
        x = _features(dm, frames)
        theirs = _reference_finetune(ast_models, ckpt, mode, frames)
        key = f"{mode}_{frames}f"
        result[f"import_{key}_max_abs_diff"] = _compare_embed(ours, theirs, x)
        result[f"import_{key}_max_abs_diff_float64"] = _compare_embed(ours.double(), theirs.double(), x.double())
        ours.float()
        if frames < PRETRAIN_FRAMES:
            ours.position_crop = "left"
            result[f"import_{key}_left_crop_max_abs_diff"] = _compare_embed(ours, theirs.float(), x)
            ours.position_crop = "centre"

    # export: our weights (perturbed, so nothing is the file we read), through export_weights; 2 layers are no
    # size the reference's ASTModel builds, which the writer refuses, so it is called with any_size here
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_weights(ours, run / WEIGHTS_FILE)
    exported = work / f"exported_{mode}.pth"
    with _any_size():
        export_weights(run, "ssast", exported)
    with deit_at_sizes(_Sizes(**TINY)):
        strict = torch.nn.DataParallel(ast_models.ASTModel(
            fshape=patch[0], tshape=patch[1], fstride=patch[0], tstride=patch[1], input_fdim=128,
            input_tdim=PRETRAIN_FRAMES, model_size="tiny", pretrain_stage=True,
        ))  # fmt: skip
    strict.load_state_dict(torch.load(exported, map_location="cpu", weights_only=True), strict=True)
    x = _features(dm, PRETRAIN_FRAMES // 2)
    back = _reference_finetune(ast_models, exported, mode, PRETRAIN_FRAMES // 2)
    result[f"export_{mode}_max_abs_diff"] = _compare_embed(ours, back, x)
    return result


@contextlib.contextmanager
def _any_size() -> Iterator[None]:
    from ssl_domains_audio import weights_ssast

    original = weights_ssast.write
    weights_ssast.write = functools.partial(original, any_size=True)
    try:
        yield
    finally:
        weights_ssast.write = original


def compare(reference: Path) -> dict[str, Any]:
    """The SSAST figures of ``benchmarks/equivalence.py`` (see the module docstring)."""
    # lightning (torchmetrics) probes torchvision when imported: import it before the reference's stand-in exists
    import ssl_domains_audio.data  # noqa: F401

    ast_models = import_reference(reference)
    work = Path(tempfile.mkdtemp(prefix="ssast_equiv_"))
    try:
        data = _clips(work / "clips")
        result: dict[str, Any] = {}
        for mode in ("patch", "frame"):
            plugin, cfg, dm = _setup(data, mode)
            x = _features(dm, FRAMES).double()
            torch.manual_seed(0)
            ref_model = reference_model(reference, cfg, FRAMES).double()
            ours = _ours_from(plugin, cfg, dm, ref_model).double()
            prefix = "" if mode == "patch" else "frame_"
            result.update(_one_step(ast_models, cfg, ref_model, ours, x, prefix))
            if mode == "patch":
                result.update(_steps(ast_models, reference, plugin, cfg, dm, x))
        imported = {}
        for mode in ("patch", "frame"):
            imported.update(_import(ast_models, mode, data, work))
        result["import_max_abs_diff"] = max(v for k, v in imported.items() if k.endswith("f_max_abs_diff"))
        result["export_max_abs_diff"] = max(v for k, v in imported.items() if k.startswith("export_"))
        result.update(imported)
        result.update(
            config={**SIZES, "num_mel_bins": 128, "frames": FRAMES, "clips": CLIPS},
            import_config={**TINY, "pretrain_frames": PRETRAIN_FRAMES},
            timm=__import__("timm").__version__,
        )
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
