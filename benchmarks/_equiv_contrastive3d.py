"""Our contrastive3d against the MONAI ViT self-supervised tutorial (Project-MONAI/tutorials @ b3c6c99,
``self_supervised_pretraining/vit_unetr_ssl/ssl_train.ipynb``), for ``benchmarks/equivalence.py --plugin
contrastive3d``.

The reference is the notebook itself, read by path: its code cells are parsed (``ast``) and the needed statements
executed, never copied: the imports (cell with ``from monai.networks.nets import ViTAutoEnc``), the
``train_transforms = Compose(...)`` assignment, the ``model = ViTAutoEnc(...)`` call with four keywords shrunk
(``img_size``, ``hidden_size``, ``mlp_dim``, and ``num_heads``, which it leaves at 12), its ``lr``,
``recon_loss``, ``contrastive_loss`` and ``optimizer`` assignments, and the body of its training loop from
``inputs, inputs_2, gt_input = ...`` to ``optimizer.step()`` (with ``device`` = CPU). MONAI is the library both
sides call.

- Views: the random part of the notebook's ``train_transforms`` (``RandSpatialCropSamplesd`` 96^3 x 2,
  ``CopyItemsd``, per view ``OneOf[RandCoarseDropoutd in-painting | out-painting]`` + ``RandCoarseShuffled``) and
  ours (``transforms.view_transforms`` at roi 96, ``crops_per_volume: 2``), seeded alike (``set_random_state``)
  on one phantom volume: ``views_max_abs_diff`` (notebook ``image`` / ``image_2`` / ``gt_image`` against our
  ``view1`` / ``view2`` / ``image``). The notebook's views are then fed to both networks.
- Weights: the notebook's ``ViTAutoEnc`` (its own init, seed 0), copied into ours with ``decoder: autoenc``
  through the identity key map ``k -> net.net.k`` (ours *is* MONAI's ``ViTAutoEnc`` under ``net.net``; our
  ``net.mask_token`` is frozen and unused without a mask).
- Reference choices switched on in ours: ``decoder: autoenc``, ``loss_form: tutorial``, ``rotation: false``, the
  notebook's temperature (``ContrastiveLoss(temperature=0.05)``).
- Measured in float64: the patch embedding, every transformer block, the final norm and both transposed
  convolutions (each view: the notebook runs them one at a time, ours as one batch), the L1, the contrastive term
  and the total loss, every gradient, and 5 optimiser steps (the notebook's ``torch.optim.Adam(lr=lr)`` against
  the core's ``build_optimizer`` with ``adam`` at the same rate, no weight decay, no clipping), new views each step.
- Import (``_equiv_contrastive3d_import.py``): a Swin UNETR encoder file in ``model_swinvit.pt``'s layout, read by
  MONAI's ``SwinUNETR.load_from`` (the reference) and by ``ssl-domains import --format swinvit``, float32 tokens.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import torch

REFERENCE_COMMIT = "b3c6c998c931d78b61c4d32b37f962a987400f8a"
NOTEBOOK = "self_supervised_pretraining/vit_unetr_ssl/ssl_train.ipynb"
SHRUNK = {"img_size": 96, "hidden_size": 48, "mlp_dim": 192, "num_heads": 4}  # the notebook: 96, 768, 3072, 12
STEPS = 5
LAYERS = ("patch_embedding.patch_embeddings", *(f"blocks.{i}" for i in range(12)), "norm", "conv3d_transpose",
          "conv3d_transpose_1")  # fmt: skip


# ---- the notebook, by path --------------------------------------------------------------------------------------


def _cell(cells: list[str], needle: str) -> ast.Module:
    """The one code cell holding ``needle``, parsed (IPython ``!``/``%`` lines dropped)."""
    found = [c for c in cells if needle in c]
    if len(found) != 1:
        raise RuntimeError(f"{NOTEBOOK}: {len(found)} code cells hold {needle!r}; the comparison expects one")
    lines = [line for line in found[0].splitlines() if not line.lstrip().startswith(("!", "%"))]
    return ast.parse("\n".join(lines))


def _assign(module: ast.Module, name: str) -> ast.Assign:
    for node in ast.walk(module):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node
    raise RuntimeError(f"{NOTEBOOK}: no assignment to {name}")


def _run(nodes: list[ast.stmt], ns: dict[str, Any]) -> None:
    exec(compile(ast.Module(body=nodes, type_ignores=[]), NOTEBOOK, "exec"), ns)


class Tutorial:
    """The notebook's statements, compiled once; ``ns`` is the namespace they run in."""

    def __init__(self, reference: Path) -> None:
        path = reference / NOTEBOOK
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not there; --reference is a Project-MONAI/tutorials checkout or extract")
        cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        imports = _cell(cells, "from monai.networks.nets import ViTAutoEnc")
        self.ns: dict[str, Any] = {"device": torch.device("cpu")}
        _run([n for n in imports.body if isinstance(n, (ast.Import, ast.ImportFrom))], self.ns)
        _run([_assign(_cell(cells, "train_transforms = Compose("), "train_transforms")], self.ns)
        setup = _cell(cells, "ViTAutoEnc(")
        call = _assign(setup, "model").value
        assert isinstance(call, ast.Call)
        call.keywords = [k for k in call.keywords if k.arg not in SHRUNK]
        call.keywords += [ast.keyword(arg=k, value=ast.Constant(v)) for k, v in SHRUNK.items()]
        self.model_call = compile(ast.fix_missing_locations(ast.Expression(call)), NOTEBOOK, "eval")
        self.setup = {name: _assign(setup, name) for name in ("lr", "recon_loss", "contrastive_loss", "optimizer")}
        _run([self.setup[k] for k in ("lr", "recon_loss", "contrastive_loss")], self.ns)
        loop = next(n for n in ast.walk(_cell(cells, "total_loss.backward()")) if isinstance(n, ast.For)
                    and ast.unparse(n.iter) == "train_loader")  # fmt: skip
        sources = [ast.unparse(s) for s in loop.body]
        first = next(i for i, s in enumerate(sources) if s.startswith("inputs, inputs_2, gt_input ="))
        backward, step = sources.index("total_loss.backward()"), sources.index("optimizer.step()")
        self.forward, self.backward, self.step = loop.body[first:backward], [loop.body[backward]], [loop.body[step]]

    def views(self, volume: torch.Tensor, seed: int) -> list[dict[str, torch.Tensor]]:
        """The random part of ``train_transforms`` (from ``RandSpatialCropSamplesd`` on), seeded."""
        chain = self.ns["train_transforms"].transforms
        start = next(i for i, t in enumerate(chain) if type(t).__name__ == "RandSpatialCropSamplesd")
        random = self.ns["Compose"](chain[start:])
        random.set_random_state(seed)
        return random({"image": volume.clone()})

    def new_model(self) -> torch.nn.Module:
        return eval(self.model_call, self.ns)

    def use(self, model: torch.nn.Module) -> None:
        """``model`` and its own ``optimizer`` (the notebook's ``torch.optim.Adam(model.parameters(), lr=lr)``)."""
        self.ns["model"] = model
        _run([self.setup["optimizer"]], self.ns)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.ns["batch_data"] = batch
        _run(self.forward, self.ns)
        return self.ns["total_loss"]


# ---- ours --------------------------------------------------------------------------------------------------------


def _config(temperature: float) -> Any:
    from ssl_domains.config import from_mapping
    from ssl_domains_medical.plugin import Contrastive3DConfig

    switches = {"decoder": "autoenc", "loss_form": "tutorial", "rotation": False, "temperature": temperature}
    sizes = {"roi": SHRUNK["img_size"], "hidden_size": SHRUNK["hidden_size"], "num_heads": SHRUNK["num_heads"]}
    return from_mapping(Contrastive3DConfig, {**sizes, **switches, "crops_per_volume": 2}, "contrastive3d")


def _ours(cfg: Any, reference: torch.nn.Module) -> torch.nn.Module:
    from ssl_domains import registry

    model = registry.load("contrastive3d").model(cfg, None).double()
    state = {f"net.net.{k}": v for k, v in reference.state_dict().items()}  # the key map: identity under net.net
    model.load_state_dict({"net.mask_token": model.net.mask_token.detach(), **state}, strict=True)
    return model


def _batches(views: list[dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The notebook's batch (its keys) and ours, in float64, from one list of crops."""
    stack = {k: torch.stack([torch.as_tensor(v[k]).double() for v in views]) for k in ("image", "image_2", "gt_image")}
    return stack, {"image": stack["gt_image"], "view1": stack["image"], "view2": stack["image_2"]}


# ---- the comparison ------------------------------------------------------------------------------------------------


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


class _Recorder:
    def __init__(self, model: torch.nn.Module) -> None:
        self.outputs: dict[str, list[torch.Tensor]] = {name: [] for name in LAYERS}
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in LAYERS]

    def _hook(self, name: str) -> Any:
        return lambda _m, _i, out: self.outputs[name].append(out.detach())

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _views_check(tutorial: Tutorial, volume: torch.Tensor) -> float:
    from ssl_domains_medical.transforms import view_transforms

    ours = view_transforms(_config(0.05))
    ours.set_random_state(0)
    mine, theirs = ours({"image": volume.clone()}), tutorial.views(volume, 0)
    pairs = (("view1", "image"), ("view2", "image_2"), ("image", "gt_image"))
    diff = max(_max_abs(torch.as_tensor(m[a]), torch.as_tensor(t[b])) for m, t in zip(mine, theirs, strict=True)
               for a, b in pairs)  # fmt: skip
    changed = float((torch.as_tensor(theirs[0]["image"]) != torch.as_tensor(theirs[0]["gt_image"])).float().mean())
    if changed == 0:
        raise RuntimeError("the seeded views are the clean crop; pick another seed")
    return diff


def _one_step(tutorial: Tutorial, reference: torch.nn.Module, ours: torch.nn.Module, objective: Any,
              batches: tuple) -> dict[str, Any]:  # fmt: skip
    theirs_batch, our_batch = batches
    rec_ref, rec_ours = _Recorder(reference), _Recorder(ours.net.net)
    ref_loss = tutorial.loss(theirs_batch)
    out = objective(ours, our_batch)
    rec_ref.close(), rec_ours.close()
    layers = {name: _max_abs(torch.cat(rec_ref.outputs[name]), rec_ours.outputs[name][0]) for name in LAYERS}
    ns = tutorial.ns
    hidden = max(_max_abs(torch.cat([h1, h2]), rec_ours.outputs[f"blocks.{i}"][0])  # what its forward returns
                 for i, (h1, h2) in enumerate(zip(ns["hidden_v1"], ns["hidden_v2"], strict=True)))  # fmt: skip
    # the reference's ContrastiveLoss on its own flattened outputs cast to float32, where our nt_xent computes
    cl32 = ns["contrastive_loss"](ns["flat_out_v1"].detach().float(), ns["flat_out_v2"].detach().float())
    _run(tutorial.backward, ns)
    out["loss"].backward()
    own = dict(ours.named_parameters())
    worst, worst_name, compared = 0.0, "", 0
    for name, p in reference.named_parameters():
        mine = own[f"net.net.{name}"]
        g_ref = p.grad if p.grad is not None else torch.zeros_like(p)
        g_ours = mine.grad if mine.grad is not None else torch.zeros_like(mine)
        scale = float(g_ref.abs().max())
        rel = _max_abs(g_ours, g_ref) / (scale if scale > 0 else 1.0)
        compared += 1
        if rel >= worst:
            worst, worst_name = rel, name
    no_grad = sorted(n for n, p in reference.named_parameters() if p.grad is None)
    return {
        "output_max_abs_diff": max(layers.values()),
        "layer_max_abs_diff": layers,
        "hidden_states_returned_max_abs_diff": hidden,
        "loss_reference": float(ref_loss),
        "loss_ours": float(out["loss"]),
        "loss_rel_diff": _rel(float(out["loss"]), float(ref_loss)),
        "recon_l1_rel_diff": _rel(float(out["recon_l1"]), float(ns["r_loss"])),
        "contrastive_rel_diff": _rel(float(out["nt_xent"]), float(ns["cl_loss"])),
        "contrastive_rel_diff_reference_in_float32": _rel(float(out["nt_xent"]), float(cl32)),
        "grad_max_rel_diff": worst,
        "grad_worst_parameter": worst_name,
        "grad_parameters_compared": compared,
        "reference_parameters_without_grad": no_grad,
    }


def _steps(tutorial: Tutorial, initial: torch.nn.Module, cfg: Any, volume: torch.Tensor) -> dict[str, Any]:
    from ssl_domains import registry
    from ssl_domains.config import OptimConfig
    from ssl_domains.module import build_optimizer

    reference = copy.deepcopy(initial)
    ours = _ours(cfg, reference)
    objective = registry.load("contrastive3d").objective(cfg)
    tutorial.use(reference)
    params = [p for p in ours.parameters() if p.requires_grad]
    our_opt = build_optimizer(params, OptimConfig(name="adam", lr=tutorial.ns["lr"], weight_decay=0.0))
    ref_losses, our_losses = [], []
    for step in range(STEPS):
        theirs_batch, our_batch = _batches(tutorial.views(volume, 100 + step))
        ref_losses.append(float(tutorial.loss(theirs_batch)))
        _run(tutorial.backward + tutorial.step, tutorial.ns)
        loss = objective(ours, our_batch)["loss"]
        loss.backward()
        our_opt.step()
        our_opt.zero_grad()
        our_losses.append(float(loss))
    return {
        "steps_loss_max_rel_diff": max(_rel(a, b) for a, b in zip(our_losses, ref_losses, strict=True)),
        "steps_losses_ours": our_losses,
        "steps_losses_reference": ref_losses,
    }


def compare(reference: Path) -> dict[str, Any]:
    """The figures listed in the module docstring."""
    from ssl_domains import registry
    from ssl_domains_medical.synthetic import phantom

    with contextlib.redirect_stdout(io.StringIO()):
        tutorial = Tutorial(reference)
    volume = torch.as_tensor(phantom((112, 104, 100), 0)[0])[None] / 1000.0  # about [0, 1], as the recipe scales
    views_diff = _views_check(tutorial, volume)
    torch.manual_seed(0)
    initial = tutorial.new_model().double()
    temperature = float(tutorial.ns["contrastive_loss"].temperature)
    cfg = _config(temperature)
    reference_model = copy.deepcopy(initial)
    tutorial.use(reference_model)
    ours = _ours(cfg, reference_model)
    batches = _batches(tutorial.views(volume, 1))
    result = {"views_max_abs_diff": views_diff}
    result.update(_one_step(tutorial, reference_model, ours, registry.load("contrastive3d").objective(cfg), batches))
    result.update(_steps(tutorial, initial, cfg, volume))
    sizes = {"num_layers": len(initial.blocks), "temperature": temperature, "lr": tutorial.ns["lr"]}
    from _equiv_contrastive3d_import import check

    result.update(check())
    result.update(
        config={**SHRUNK, **sizes, "crops": int(batches[0]["image"].shape[0])},
        key_map="identity: reference k -> ours net.net.k (ours is MONAI's ViTAutoEnc with decoder: autoenc)",
    )
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", type=Path, default=Path.home() / ".cache/ssl-domains-refs/monai-tutorials")
    print(json.dumps(compare(parser.parse_args().reference)))
