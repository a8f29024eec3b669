"""Evaluation: label-free landmark matching across a known deformation, and few-label segmentation fine-tuning.

- :func:`warp_with_coordinates` deforms a volume (and any label maps) with MONAI's ``Rand3DElastic`` (affine +
  elastic) and returns, for every output voxel, the source voxel it was sampled from: the deformation is known
  exactly, so correspondences are ground truth.
- :func:`landmark_error` matches points of volume B to volume A by nearest neighbour (cosine) of point
  embeddings (the encoder embedding of the crop centred on a point) and returns the mean distance in mm to the
  true corresponding points; no label is needed (the landmark protocol of self-supervised anatomical embeddings,
  Yan et al., TMI 2022, here on pairs with a known deformation). :func:`dense_landmark_error` does the same with
  dense multi-scale decoder features (a secondary figure).
- :func:`finetune_segmentation` fine-tunes a UNETR/SwinUNETR from given weights or from random init on a few
  labelled volumes for a fixed step budget (``DiceCELoss``), picks the step with the best validation Dice and
  reports test Dice there (MONAI's ``DiceMetric``, background excluded).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.transforms import Rand3DElastic, RandCropByPosNegLabeld
from scipy.spatial import cKDTree

from ssl_domains import ConfigError
from ssl_domains.evaluation import predict_embeddings, rankme

from .model import VolumeNet
from .transforms import crop_around

if TYPE_CHECKING:
    from .data import MedicalDataModule
    from .model import AliceModel, Contrastive3DModel
    from .plugin import MedicalConfig

WARP = {
    "sigma_range": (5.0, 7.0), "magnitude_range": (100.0, 200.0), "rotate_range": (0.12, 0.12, 0.12),
    "scale_range": (0.08, 0.08, 0.08), "translate_range": (3.0, 3.0, 3.0),
}  # fmt: skip
"""Deformation of a synthetic pair: about 7 degrees, 8 % scale, 3 voxels shift, and an elastic field whose
non-affine part moves voxels by 0.8 voxel on average (2 at most)."""


def warp_with_coordinates(
    channels: np.ndarray | torch.Tensor, seed: int, **warp: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deform ``channels`` ``[C, D, H, W]`` (image first, then any maps) with one random affine + elastic warp.

    Returns ``(warped [C, D, H, W], source [3, D, H, W], valid [D, H, W])``: ``source`` holds, for each output
    voxel, the input voxel coordinate it came from (bilinear sampling of coordinate channels warped with the
    image), and ``valid`` marks voxels sampled from inside the input.
    """
    x = torch.as_tensor(np.asarray(channels), dtype=torch.float32)
    shape = x.shape[1:]
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    stacked = torch.cat([x, grid, torch.ones(1, *shape)])
    elastic = Rand3DElastic(prob=1.0, padding_mode="zeros", mode="bilinear", **{**WARP, **warp})
    elastic.set_random_state(seed)
    out = torch.as_tensor(elastic(stacked))
    c = x.shape[0]
    return out[:c], out[c : c + 3], out[c + 3] > 0.999


def sample_map(field: torch.Tensor, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``field`` ``[K, D, H, W]`` at voxel coordinates ``points`` ``[N, 3]``."""
    size = torch.tensor(field.shape[1:], dtype=torch.float32)
    p = torch.as_tensor(points, dtype=torch.float32)
    normalised = (2 * p / (size - 1) - 1).flip(-1)  # grid_sample wants (w, h, d) order in [-1, 1]
    grid = normalised.view(1, -1, 1, 1, 3)
    out = torch.nn.functional.grid_sample(field[None].float(), grid, mode="bilinear", align_corners=True)
    return out.view(field.shape[0], -1).T.numpy()


@torch.no_grad()
def dense_landmark_error(
    net: VolumeNet,
    image_a: torch.Tensor,
    image_b: torch.Tensor,
    b_to_a: Callable[[np.ndarray], np.ndarray],
    spacing: tuple[float, float, float],
    points: int = 100,
    seed: int = 0,
    threshold: float = 0.05,
) -> dict[str, float]:
    """Mean error (mm) of nearest-neighbour matches of dense multi-scale decoder features from B to A (a secondary
    figure; :func:`landmark_error` is the protocol's).

    Arguments as :func:`landmark_error`; ``points`` foreground voxels of B's feature grid (1/2 resolution) are
    matched against every foreground cell of A's grid (:meth:`.model.VolumeNet.dense_features`, sliding window).
    """
    net.eval()
    device = _device(net)
    feats = [net.over_volume(img[None].float().to(device), "dense_features")[0].cpu() for img in (image_a, image_b)]
    fg = [F.interpolate(img[None].float().cpu(), size=f.shape[1:], mode="trilinear")[0, 0] > threshold
          for img, f in zip((image_a, image_b), feats, strict=True)]  # fmt: skip
    scale = [
        np.asarray(img.shape[1:]) / np.asarray(f.shape[1:]) for img, f in zip((image_a, image_b), feats, strict=True)
    ]
    cells_a = torch.nonzero(fg[0])
    cells_b = torch.nonzero(fg[1]).numpy()
    centres_b = (cells_b + 0.5) * scale[1] - 0.5
    truth = b_to_a(centres_b)
    usable = _counterparts_on_foreground((truth + 0.5) / scale[0] - 0.5, fg[0].numpy())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(usable, size=min(points, len(usable)), replace=False)
    feat_a = F.normalize(feats[0][:, fg[0]].T, dim=1)  # [Na, C]
    query = feats[1][:, cells_b[chosen, 0], cells_b[chosen, 1], cells_b[chosen, 2]].T
    best = (F.normalize(query, dim=1) @ feat_a.T).argmax(1)
    predicted = (cells_a[best].numpy() + 0.5) * scale[0] - 0.5
    errors = np.linalg.norm((predicted - truth[chosen]) * np.asarray(spacing), axis=1)
    return {"landmark_mm": float(errors.mean()), "landmark_median_mm": float(np.median(errors)),
            "landmark_points": len(chosen)}  # fmt: skip


POINT_READ_OUTS = ("mean", "centre", "grid", "block:K")
"""Point descriptors :func:`point_embeddings` can read off a crop's encoder: the protocol's ``mean`` token, the
``centre`` tokens (the 2^3 tokens around the crop centre, i.e. the token grid at the point), the whole token
``grid`` (its layout kept), or ``block:K``, the mean token after ViT block K (0: the patch embeddings) or Swin
stage K."""


def _read_out(net: VolumeNet, crops: torch.Tensor, read_out: str) -> torch.Tensor:
    if read_out == "mean":
        return net.encode(crops)[0].mean(1)
    if read_out in ("centre", "grid"):
        grid = net.token_grid(crops)
        if read_out == "grid":
            return grid.flatten(1)
        side = grid.shape[-1]
        lo, hi = (side - 1) // 2, side // 2 + 1
        return grid[..., lo:hi, lo:hi, lo:hi].flatten(2).mean(-1)
    if read_out.startswith("block:"):
        depth = len(net.net.vit.blocks) if net.backbone == "vit" else 4
        text = read_out.split(":", 1)[1]
        if not text.isdigit() or int(text) > depth:
            raise ConfigError(f"read-out {read_out!r}: K must be a whole number from 0 to {depth} for this network")
        block = int(text)
        if net.backbone == "vit" and block == 0:
            return net.net.vit.patch_embedding(crops).mean(1)
        state = net.encode(crops)[1][block - 1 if net.backbone == "vit" else block]
        return state.mean(1) if state.dim() == 3 else state.flatten(2).mean(-1)
    raise ConfigError(f"unknown point read-out {read_out!r}; choose one of {', '.join(POINT_READ_OUTS)}")


@torch.no_grad()
def point_embeddings(
    net: VolumeNet, image: torch.Tensor, centres: np.ndarray, batch: int = 8, read_out: str = "mean"
) -> torch.Tensor:
    """``[N, dim]``: for each voxel of ``centres`` ``[N, 3]``, a descriptor of the ``roi``^3 crop of ``image``
    ``[1, D, H, W]`` centred on it (zero-padded at the edges); by default the mean encoder token, the vector
    ``embed`` pools (other ``read_out`` values: :data:`POINT_READ_OUTS`). Crops are cut on the host and embedded
    on ``net``'s device; the result is on the host."""
    net.eval()
    device = _device(net)
    image = torch.as_tensor(image).cpu()
    out = []
    for start in range(0, len(centres), batch):
        crops = torch.stack([torch.as_tensor(crop_around(image, c, net.roi)) for c in centres[start : start + batch]])
        out.append(_read_out(net, crops.float().to(device), read_out).float().cpu())
    return torch.cat(out)


def _device(net: Any) -> torch.device:
    # descriptors without weights (a pooled crop, a test double) run on the host
    parameters = getattr(net, "parameters", None)
    return next(parameters(), torch.empty(0)).device if parameters is not None else torch.device("cpu")


def _counterparts_on_foreground(truth: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Indices of the points whose true counterpart (voxel coordinates of A) lies on A's foreground; a warp can
    move anatomy out of one volume's field of view, and such a point has nothing to match."""
    inside = np.isfinite(truth).all(1)
    voxel = np.zeros_like(truth, dtype=np.int64)
    voxel[inside] = np.round(truth[inside]).astype(np.int64)
    inside &= ((voxel >= 0) & (voxel < np.asarray(foreground.shape))).all(1)
    inside[inside] = foreground[tuple(voxel[inside].T)]
    return np.flatnonzero(inside)


@torch.no_grad()
def landmark_error(
    net: VolumeNet,
    image_a: torch.Tensor,
    image_b: torch.Tensor,
    b_to_a: Callable[[np.ndarray], np.ndarray],
    spacing: tuple[float, float, float],
    points: int = 100,
    seed: int = 0,
    stride: int = 6,
    threshold: float = 0.05,
    read_out: str = "mean",
) -> dict[str, float]:
    """Mean error (mm) of nearest-neighbour matches of point embeddings from volume B to volume A.

    A point's descriptor is the encoder embedding of the crop centred on it (:func:`point_embeddings`), as a
    self-supervised anatomical embedding describes a point (Yan et al., TMI 2022). ``points`` random foreground
    voxels of B, whose true counterparts lie on A's foreground, are matched by cosine similarity against A's
    foreground voxels on a grid of ``stride`` voxels; descriptors are centred by the candidates' mean first (a
    component shared by every crop says nothing about where a crop is). ``image_a``/``image_b`` ``[1, D, H, W]``
    are preprocessed volumes; ``b_to_a`` maps voxel coordinates of B ``[N, 3]`` to the true voxel coordinates
    of A (NaN where unknown). The error includes the grid's quantisation (``stride`` x spacing): even a perfect
    descriptor is off by the distance to the nearest candidate (``landmark_floor_mm``: about 6 mm at stride 6 and
    2 mm voxels).
    ``read_out`` picks the descriptor (:func:`point_embeddings`); the protocol's is ``mean``.
    """
    fg_a, fg_b = (torch.as_tensor(img[0]).cpu().numpy() > threshold for img in (image_a, image_b))
    grid = np.stack(np.meshgrid(*[np.arange(stride // 2, s, stride) for s in fg_a.shape], indexing="ij"), -1)
    candidates = grid.reshape(-1, 3)
    candidates = candidates[fg_a[tuple(candidates.T)]]
    voxels_b = np.argwhere(fg_b)
    truth = b_to_a(voxels_b.astype(np.float64))
    usable = _counterparts_on_foreground(truth, fg_a)
    chosen = np.random.default_rng(seed).choice(usable, size=min(points, len(usable)), replace=False)
    keys = point_embeddings(net, image_a, candidates, read_out=read_out)
    queries = point_embeddings(net, image_b, voxels_b[chosen], read_out=read_out)
    centre = keys.mean(0, keepdim=True)
    similarity = F.normalize(queries - centre, dim=1) @ F.normalize(keys - centre, dim=1).T
    predicted = candidates[similarity.argmax(1).numpy()]
    mm = np.asarray(spacing)
    errors = np.linalg.norm((predicted - truth[chosen]) * mm, axis=1)
    floor = cKDTree(candidates * mm).query(truth[chosen] * mm)[0]  # a perfect descriptor's error
    return {"landmark_mm": float(errors.mean()), "landmark_median_mm": float(np.median(errors)),
            "landmark_floor_mm": float(floor.mean()), "landmark_points": len(chosen)}  # fmt: skip


@torch.no_grad()
def evaluate_landmarks(
    model: AliceModel | Contrastive3DModel, datamodule: MedicalDataModule, cfg: MedicalConfig,
    device: torch.device | str, random_twin: Callable[[], AliceModel | Contrastive3DModel],
    pairs: int = 4, points: int = 50, stride: int = 8,
) -> dict[str, float]:  # fmt: skip
    """The plugin's label-free ``evaluate``: each of up to ``pairs`` volumes against a warped copy of itself
    (:func:`warp_with_coordinates`, seed = its index), with the trained network and a randomly initialised twin
    of the same architecture; plus RankMe of the whole-volume embeddings. Runs on ``device``; volumes
    and warps stay on the host. ``points`` and ``stride`` are coarser than the benchmark's (100, 6) so that
    a CPU run takes minutes: every candidate point is a crop through the encoder."""
    results: dict[str, list[float]] = {"landmark_mm": [], "landmark_mm_random": []}
    torch.manual_seed(0)
    twin = random_twin().to(device)
    for index in range(min(pairs, len(datamodule.records))):
        image = torch.as_tensor(datamodule.volume(index)["image"]).float()
        warped, source, valid = warp_with_coordinates(image, seed=index)
        source = torch.where(valid[None], source, torch.full_like(source, float("nan")))

        def b_to_a(points: np.ndarray, source: torch.Tensor = source) -> np.ndarray:
            return sample_map(source, points)

        for key, network in (("landmark_mm", model.net), ("landmark_mm_random", twin.net)):
            error = landmark_error(network, image, warped, b_to_a, cfg.spacing, points, index, stride)
            results[key].append(error["landmark_mm"])
    embeddings = predict_embeddings(model, datamodule, device).vectors
    return {
        **{k: float(np.mean(v)) for k, v in results.items()},
        "rankme": float(rankme(embeddings)),
        "volumes": float(len(datamodule.records)),
    }


def _predict(net: VolumeNet, image: torch.Tensor) -> torch.Tensor:
    logits = sliding_window_inference(
        image[None].float(), [net.roi] * 3, sw_batch_size=4, predictor=lambda x: net(x)["output"], overlap=0.25
    )
    return logits.argmax(1)


@torch.no_grad()
def dice_scores(net: VolumeNet, volumes: list[tuple[torch.Tensor, torch.Tensor]], classes: int) -> np.ndarray:
    """Per-volume, per-class Dice ``[V, classes - 1]`` (background excluded) of ``net``'s sliding-window argmax."""
    net.eval()
    metric = DiceMetric(include_background=False, reduction="none")
    for image, label in volumes:
        pred = torch.nn.functional.one_hot(_predict(net, image), classes).permute(0, 4, 1, 2, 3)
        truth = torch.nn.functional.one_hot(label.long(), classes).permute(0, 4, 1, 2, 3)
        metric(pred, truth)
    return metric.aggregate().numpy()


def finetune_segmentation(
    cfg: MedicalConfig,
    init: dict[str, torch.Tensor] | None,
    train: list[tuple[torch.Tensor, torch.Tensor]],
    val: list[tuple[torch.Tensor, torch.Tensor]],
    test: list[tuple[torch.Tensor, torch.Tensor]],
    classes: int,
    steps: int = 150,
    eval_every: int = 50,
    seed: int = 0,
    lr: float = 1e-4,
    crops_per_step: int = 2,
) -> dict[str, Any]:
    """Fine-tune a segmentation UNETR/SwinUNETR (``cfg``'s backbone) from ``init`` (a pretrained
    ``VolumeNet.net`` state; the 1-channel ``out`` head is left out) or from random init (``None``).

    Volumes are ``(image [1, D, H, W], label [1, D, H, W])`` after the plugin's preprocessing. Each step takes
    ``crops_per_step`` ROI crops of one training volume, centred half on labelled voxels and half on background
    (``RandCropByPosNegLabeld``, pos = neg = 1), with ``DiceCELoss`` and AdamW (``lr``, weight decay 1e-5; the
    MONAI UNETR tutorial's optimiser). Every ``eval_every`` steps the validation Dice is computed (NaN where a
    class is absent from a volume, left out of the mean); the test Dice is reported for the best validation
    checkpoint. The seed fixes the initialisation of anything not loaded and the crops.
    """
    torch.manual_seed(seed)
    net = VolumeNet.from_config(cfg, out_channels=classes)
    if init is not None:
        missing, unexpected = net.net.load_state_dict({k: v for k, v in init.items() if not k.startswith("out.")},
                                                      strict=False)  # fmt: skip
        if unexpected or not all(k.startswith("out.") for k in missing):
            raise ConfigError(
                f"the pretrained weights do not fit a {cfg.backbone} of this configuration (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}): fine-tune with the backbone and sizes the run was pretrained with"
            )
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    cropper = RandCropByPosNegLabeld(["image", "label"], "label", [cfg.roi] * 3, pos=1, neg=1,
                                     num_samples=crops_per_step)  # fmt: skip
    cropper.set_random_state(seed)
    best: tuple[float, int, dict[str, torch.Tensor]] = (float("-inf"), 0, copy.deepcopy(net.state_dict()))
    history = []
    for step in range(1, steps + 1):
        net.train()
        image, label = train[int(torch.randint(len(train), ()))]
        crops = cropper({"image": image, "label": label})
        x = torch.stack([torch.as_tensor(c["image"]) for c in crops]).float()
        y = torch.stack([torch.as_tensor(c["label"]) for c in crops]).float()
        loss = loss_fn(net(x)["output"], y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % eval_every == 0 or step == steps:
            # a class absent from a validation volume gives NaN for that volume; the others still count
            val_dice = float(np.nanmean(dice_scores(net, val, classes)))
            history.append({"step": step, "val_dice": val_dice, "loss": float(loss.detach())})
            if val_dice > best[0]:
                best = (val_dice, step, copy.deepcopy(net.state_dict()))
    net.load_state_dict(best[2])
    test_dice = dice_scores(net, test, classes)
    return {"test_dice": float(np.nanmean(test_dice)), "test_dice_per_class": np.nanmean(test_dice, 0).tolist(),
            "val_dice": best[0], "step": best[1], "history": history}  # fmt: skip
