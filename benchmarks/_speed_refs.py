"""Reference training steps for ``speed.py``: CROMA, SSL4EO-S12 (MoCo v3 / MAE), the MONAI ViT recipe
(contrastive3d) and Alice's parts, at our configuration, on our batch.

Every reference is loaded from its checkout at benchmark time by the equivalence harnesses
(``_equiv_croma.py``, ``_equiv_ssl4eo.py``, ``_equiv_contrastive3d.py``, ``_equiv_alice.py``), with their key
maps and shims; nothing of the references is copied here. Each builder returns a closure running one reference
step (forward, loss, backward, optimiser step, and the method's momentum/EMA update where it has one), with the
attributes ``speed.py`` reads: ``samples_per_step`` (where it differs from ours), ``scope`` (what the step
covers) and, for Alice, ``ours`` (our step restricted to the same parts, timed in place of our full step).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist


def process_group(device: torch.device) -> None:
    """A one-process group for the references' ``all_gather`` / ``all_reduce`` (kept for the process)."""
    if dist.is_initialized():
        return
    store = Path(tempfile.mkdtemp(prefix="ssl_speed_pg_")) / "store"
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)


def _adamw(params: list[torch.nn.Parameter], optim: Any, device: torch.device) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` at our ``optim`` settings, PyTorch's default (for-each) implementation."""
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


# ---- CROMA (antofuller/CROMA, pretrain_croma.py) ----------------------------------------------------------------


def croma_step(ref_dir: Path, cfg: Any, optim: Any, batch: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """``CROMA.forward`` (its ``get_mask`` draws, encoders, X-ALiBi joint encoder, MAE decoder, InfoNCE through
    ``dist.all_gather``), backward, AdamW, ``zero_grad``. The reference has no training loop: AdamW at our
    ``run_defaults``, as the equivalence check. Its decoder hard-codes 120² chips of patch 8."""
    from _equiv_croma import _reference_model, import_reference

    if cfg.chip != 120 or cfg.patch != 8:
        raise ValueError(
            f"the CROMA reference's decoder hard-codes 120² chips of patch 8 (got {cfg.chip}, {cfg.patch})"
        )
    ref = import_reference(Path(ref_dir))
    device = batch["optical"].device
    process_group(device)
    model = _reference_model(ref, cfg, seed=0).float().to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adamw(params, optim, device)
    imgs = torch.cat([batch["optical"], batch["radar"]], dim=1)  # the reference's stack: optical, then radar
    n = (cfg.chip // cfg.patch) ** 2
    b = imgs.shape[0]

    def step() -> torch.Tensor:
        radar_info = ref.get_mask(b, n, device, cfg.mask_ratio)
        optical_info = ref.get_mask(b, n, device, cfg.mask_ratio)
        contrast, mae = model(imgs, radar_info, optical_info, rank=0, world_size=1)
        loss = contrast + mae
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    step.scope = "full step: masks, forward, InfoNCE + MAE, backward, AdamW"
    step.modules = {"model": model}
    return step


# ---- SSL4EO-S12 (MoCo v3 / MAE) ---------------------------------------------------------------------------------


def ssl4eo_step(ref_dir: Path, cfg: Any, optim: Any, batch: dict[str, torch.Tensor], bands: int) -> Callable[[], Any]:
    """MoCo v3: ``MoCo_ViT.forward(x1, x2, m)`` (its momentum update, both views through both encoders, the
    symmetric loss with ``concat_all_gather``), backward, AdamW (moco-v3's ViT optimiser), ``zero_grad``; the
    views are our batch's, augmented once by our ``augment`` (the reference augments on the host, in its
    DataLoader workers). MAE: ``MaskedAutoencoderViT.forward(imgs, mask_ratio)``, backward, AdamW."""
    from _equiv_ssl4eo import _cuda_is_identity, import_reference, reference_model

    ref = import_reference(Path(ref_dir))
    device = batch["view1"].device
    process_group(device)
    model = reference_model(ref, cfg, bands, seed=0).float().to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adamw(params, optim, device)
    on_host = _cuda_is_identity if device.type == "cpu" else contextlib.nullcontext
    if cfg.objective == "moco":
        from ssl_domains_rs.objective import augment

        torch.manual_seed(0)
        with torch.no_grad():
            x1, x2 = augment(batch["view1"]), augment(batch["view2"])

        def forward() -> torch.Tensor:
            with on_host():
                return model(x1, x2, cfg.momentum)

        scope = "full step: momentum update, 2 views x 2 encoders, loss, backward, AdamW (views pre-augmented)"
    else:
        imgs = batch["view1"]

        def forward() -> torch.Tensor:
            return model(imgs, cfg.mask_ratio)[0]

        scope = "full step: random_masking, encoder, decoder, loss, backward, AdamW"

    def step() -> torch.Tensor:
        loss = forward()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    step.scope = scope
    step.modules = {"model": model}
    return step


# ---- contrastive3d (MONAI ViT self-supervised tutorial notebook) ------------------------------------------------


def contrastive3d_step(ref_dir: Path, cfg: Any, batch: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """The notebook's training-loop body on our views (its ``image`` / ``image_2`` / ``gt_image`` = our
    ``view1`` / ``view2`` / ``image``): ``.to(device)``, ``zero_grad``, ``ViTAutoEnc`` on each view, L1,
    ``ContrastiveLoss`` on the flattened outputs, ``total_loss.backward()``, ``optimizer.step()`` (its Adam), with
    the notebook's ``ViTAutoEnc`` at our sizes (``img_size`` = roi, ``hidden_size``, ``mlp_dim`` = 4 x hidden,
    ``num_heads``)."""
    import io

    import _equiv_contrastive3d as equiv

    device = batch["image"].device
    sizes = {"img_size": cfg.roi, "hidden_size": cfg.hidden_size, "mlp_dim": 4 * cfg.hidden_size,
             "num_heads": cfg.num_heads}  # fmt: skip
    with mock.patch.dict(equiv.SHRUNK, sizes), contextlib.redirect_stdout(io.StringIO()):
        tutorial = equiv.Tutorial(Path(ref_dir))
    tutorial.ns["device"] = device
    model = tutorial.new_model().to(device).train()
    tutorial.use(model)
    theirs = {"image": batch["view1"], "image_2": batch["view2"], "gt_image": batch["image"]}
    backward_and_step = tutorial.backward + tutorial.step

    def step() -> torch.Tensor:
        loss = tutorial.loss(theirs)
        equiv._run(backward_and_step, tutorial.ns)
        return loss.detach()

    step.scope = "full step: the notebook's loop body (2 ViTAutoEnc passes, L1 + ContrastiveLoss, Adam)"
    step.modules = {"model": model}
    return step


# ---- Alice: the parts of alibaba-damo-academy/alice that run -----------------------------------------------------


class _Fixed(torch.nn.Module):
    """Stands in for a backbone: returns the given outputs (student: ``forward``; teacher: ``context``)."""

    def __init__(self, student: dict[str, Any], teacher: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.out, self.ctx = student, teacher

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any]:
        return self.out

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ctx


def alice_step(ref_dir: Path, cfg: Any, optim: Any, batch: dict[str, torch.Tensor], model: Any) -> Callable[[], Any]:
    """Alice as released does not run end to end (``models/head.py:146``), so both sides time the same parts on
    the same tensors: the backbone outputs (student tokens, decoder map, reconstruction; teacher tokens and map)
    are computed once by our model and held fixed. Reference: ``DINOHead`` (``models/head.py``) on the student's
    and teacher's [CLS], ``CASA`` (``CASA/CASA_Module.py``) on the projected tokens, ``loss.Loss`` (DINO [CLS]
    and patch terms with EMA centres, MSE), its masks (``utils.random_mask``), backward, AdamW over heads and
    CASA, and ``engine_pretrain.py``'s EMA statements over the whole student/teacher. Ours (``step.ours``): the
    same parts of ``AliceObjective`` with the backbones stood in, backward, AdamW over the same parts, and
    ``AliceModel.after_step`` (the whole EMA and the centres)."""
    from _equiv_alice import EPOCH, EPOCHS, LAMBDA3, WARMUP_EPOCHS, Reference

    from ssl_domains_medical.objective import AliceObjective, _tokens

    ref = Reference(Path(ref_dir))
    device = batch["query"].device
    process_group(device)
    crops = torch.cat([batch["query"], batch["anchor"]])
    views = torch.cat([batch["query_view"], batch["anchor_view"]])
    with torch.no_grad():  # the backbone outputs both sides start from
        student = model.net(views)
        teacher_net = model.teacher.module[0]
        t_tokens, t_map = teacher_net.context(crops)
    leaf = {"output": student["output"].detach().requires_grad_(),
            "tokens": student["tokens"].detach().requires_grad_(),
            "pyramid": [None, student["pyramid"][1].detach().requires_grad_()]}  # fmt: skip
    fixed = _Fixed(leaf, (t_tokens.detach(), t_map.detach()))

    # ours: the model's heads, CASA, centres and EMA; the backbones stood in
    teacher = model.teacher
    stand_in = types.SimpleNamespace(
        **{k: getattr(model, k) for k in ("query_proj", "context_proj", "cls_head", "align", "patch_prototypes",
                                          "progress", "center_cls", "center_patch", "pending_cls", "pending_patch")},
        net=fixed, teacher=types.SimpleNamespace(module=(fixed, *teacher.module[1:])),
    )  # fmt: skip
    objective = AliceObjective(cfg)
    heads = [model.query_proj, model.context_proj, model.cls_head, model.align]
    our_params = [p for m in heads for p in m.parameters() if p.requires_grad]
    our_opt = _adamw(our_params, optim, device)

    def ours() -> None:
        loss = objective(stand_in, batch)["loss"]
        loss.backward()
        our_opt.step()
        our_opt.zero_grad(set_to_none=True)
        model.after_step(0.5)

    # the reference: its DINOHead, CASA and Loss at our sizes, on the same tensors
    head_args = {"nlayers": 3, "hidden_dim": cfg.head_hidden, "bottleneck_dim": cfg.head_bottleneck}
    with _reference_modules(ref):
        head_module = ref.load_head()
    ref_head = head_module.DINOHead(model.net.token_dim, cfg.out_dim, **head_args).to(device)
    ref_head_t = head_module.DINOHead(model.net.token_dim, cfg.out_dim, **head_args).to(device)  # weight_norm:
    ref_head_t.load_state_dict(ref_head.state_dict())  # no deepcopy
    ref_head_t.requires_grad_(False)
    dk = cfg.align_dim // cfg.align_heads
    casa = ref.casa.CASA(cfg.align_dim, cfg.align_ff, cfg.align_heads, dk, dk).to(device).train()
    temps = (cfg.teacher_temp_start, cfg.teacher_temp) * 2  # [CLS] and patch: warm-up start, end
    loss_fn = ref.loss.Loss(cfg.out_dim, cfg.align_dim, 2, *temps, WARMUP_EPOCHS, EPOCHS, lambda1=1.0, lambda2=1.0,
                            lambda3=LAMBDA3).to(device)  # fmt: skip
    with torch.no_grad():
        query = model.query_proj(leaf["tokens"]).detach().requires_grad_()
        ctx_s = model.context_proj(_tokens(leaf["pyramid"][1])).detach().requires_grad_()
        ctx_t = teacher.module[2](_tokens(t_map)).detach()
    ref_params = [*ref_head.parameters(), *casa.parameters()]
    ref_opt = _adamw([p for p in ref_params if p.requires_grad], optim, device)
    ema_student, ema_teacher = copy.deepcopy(model.student()), copy.deepcopy(teacher.module)
    ns: dict[str, Any] = {"torch": torch, "student": types.SimpleNamespace(module=ema_student),
                          "teacher_without_ddp": ema_teacher, "it": 0,
                          "momentum_schedule": [cfg.momentum]}  # fmt: skip
    exec(ref.ema[0], ns)
    mask_args = types.SimpleNamespace(local_rank=0, patch_size=16, mask_ratio=cfg.mask_ratio)
    images = [batch["query"], batch["anchor"]]

    def step() -> torch.Tensor:
        masks = [m.to(device) for m in ref.utils.random_mask(mask_args, images)]
        cls_s = ref_head(leaf["tokens"].mean(1))
        with torch.no_grad():
            cls_t = ref_head_t(t_tokens.mean(1))
        feats = casa([None, query, ctx_s], [None, None, ctx_t])
        out = ref.loss_forward(loss_fn, images, [cls_s, None, None, leaf["output"]], [cls_t, None, None, None],
                               feats[0], feats[1], masks, EPOCH)  # fmt: skip
        out["loss"].backward()
        ref_opt.step()
        ref_opt.zero_grad()
        exec(ref.ema[1], ns)
        return out["loss"].detach()

    step.ours = ours
    step.scope = (
        "parts: DINO [CLS] head, CASA, DINO + MSE loss, masks, backward, AdamW over heads and CASA, EMA over the "
        "whole teacher; backbones held fixed on both sides (the reference's does not run)"
    )
    step.modules = {"casa": casa, "head": ref_head}
    return step


@contextlib.contextmanager
def _reference_modules(ref: Any):
    """``models/head.py`` imports ``utils`` (the reference's, loaded by the harness)."""
    import importlib.util
    import sys

    root = Path(ref.loss.__file__).resolve().parent

    def load_head() -> types.ModuleType:
        spec = importlib.util.spec_from_file_location("alice_ref_head", root / "models" / "head.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    saved = sys.modules.get("utils")
    sys.modules["utils"] = ref.utils
    ref.load_head = load_head
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("utils", None)
        else:
            sys.modules["utils"] = saved
