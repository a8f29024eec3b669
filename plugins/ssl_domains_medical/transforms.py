"""The MONAI transforms of the 3-D plugins: the checks that reject unusable volumes naming the file, the
deterministic preprocessing chain (``LoadImaged`` ... ``SpatialPadd``), contrastive3d's corrupted views, the
intensity jitter and the centred crop (:mod:`.data` documents the whole pipeline)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import NibabelReader
from monai.data.utils import is_supported_format

from ssl_domains import DataError
from ssl_domains.arrayfile import will_need

if TYPE_CHECKING:  # annotations only
    from .plugin import Contrastive3DConfig, MedicalConfig


class FreeSurferReader(NibabelReader):
    """FreeSurfer's MGH / MGZ volumes (``orig.mgz``, ``brain.mgz``), read by nibabel as MONAI's NIfTI reader reads
    NIfTI: MONAI's ``NibabelReader`` would read them too, but its suffix check admits NIfTI alone."""

    def verify_suffix(self, filename: Any) -> bool:
        return is_supported_format(filename, ["mgz", "mgh"])

    def read(self, data: Any, **kwargs: Any) -> Any:
        import nibabel as nib

        images = super().read(data, **kwargs)  # as NIfTI, so that MONAI finds the header fields it reads
        as_nifti = lambda im: nib.Nifti1Image(np.asanyarray(im.dataobj), im.affine)  # noqa: E731
        return [as_nifti(im) for im in images] if isinstance(images, list) else as_nifti(images)


def _above(image: torch.Tensor, threshold: float) -> torch.Tensor:
    return image > threshold


class CheckVolumed(mt.MapTransform):
    """Rejects what the 3-D plugins cannot use, naming the file: not 3-D, several volumes, NaN/inf, nothing but
    zeros. Runs right after ``EnsureChannelFirstd``."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        for key in self.key_iterator(data):
            image = data[key]
            source = _source(image)
            spatial = tuple(image.shape[1:])
            if len(spatial) != 3 or min(spatial) < 2:
                raise DataError(
                    f"{source}: a {len(spatial) if min(spatial) > 1 else len(spatial) - 1}-D image of shape "
                    f"{tuple(image.shape[1:])}, but the medical plugins need 3-D volumes; pass a NIfTI volume or a "
                    "folder holding a whole DICOM series"
                )
            if image.shape[0] != 1:
                raise DataError(
                    f"{source}: holds {image.shape[0]} volumes (a 4-D series or a multi-channel image); pass one 3-D "
                    "volume per file (split it, e.g. with nibabel's four_to_three or fslsplit)"
                )
            if key == "image":
                bad = int((~torch.isfinite(torch.as_tensor(image))).sum())
                if bad:
                    raise DataError(f"{source}: {bad} voxels are NaN or inf; fix or mask them before training")
                if float(image.max()) == float(image.min()):
                    raise DataError(
                        f"{source}: every voxel has the same value ({float(image.max())}); it holds no image"
                    )
        return data


class CheckLabelGridd(mt.MapTransform):
    """A label map must share its image's voxel grid (shape and affine): resampling one onto the other is a
    choice (nearest neighbour, which space) the user should make, not one made silently here."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        image, label = data["image"], data["label"]
        same_shape = tuple(image.shape[1:]) == tuple(label.shape[1:])
        same_affine = np.allclose(np.asarray(image.affine), np.asarray(label.affine), atol=1e-3)
        if not (same_shape and same_affine):
            raise DataError(
                f"{_source(label)}: the label map's grid (shape {tuple(label.shape[1:])}, affine "
                f"{np.round(np.asarray(label.affine), 3).tolist()}) differs from that of its image {_source(image)} "
                f"(shape {tuple(image.shape[1:])}, affine {np.round(np.asarray(image.affine), 3).tolist()}); "
                "resample the labels onto the image with nearest-neighbour interpolation, e.g. nibabel's "
                "processing.resample_from_to(label, image, order=0)"
            )
        return data


class CheckSized(mt.MapTransform):
    """With ``pad: false``: a volume smaller than the ROI on any side, after resampling and cropping to the
    foreground, is an error naming the file (instead of MONAI's padding it silently)."""

    def __init__(self, keys: str, roi: int) -> None:
        super().__init__(keys)
        self.roi = roi

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        shape = tuple(image.shape[1:])
        if min(shape) < self.roi:
            raise DataError(
                f"{_source(image)}: {shape} voxels after resampling and cropping to the foreground, smaller than the "
                f"ROI {self.roi}^3; set pad: true to zero-pad it, or lower roi / the spacing"
            )
        return data


class Compactd(mt.MapTransform):
    """Each tensor in storage of its own size: ``CropForegroundd`` returns a view of the resampled volume, and
    ``torch.save`` (``PersistentDataset``) writes a view's whole storage, so the disk cache held every volume
    before its foreground crop (55.8 MB where the cropped float32 volume is 28.9, on TotalSegmentator-like CTs).
    A copy only where the storage is larger than the tensor."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            value = out[key]
            if torch.is_tensor(value) and value.untyped_storage().nbytes() > value.numel() * value.element_size():
                out[key] = value.clone(memory_format=torch.contiguous_format)
        return out


def _source(image: Any) -> str:
    meta = getattr(image, "meta", {}) or {}
    name = meta.get("filename_or_obj", "<volume>")
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)


def preprocessing(cfg: MedicalConfig, keys: tuple[str, ...]) -> mt.Compose:
    """The deterministic MONAI chain (see the module docstring); ``keys`` is ``("image",)`` or with ``"label"``."""
    modes = tuple("nearest" if k == "label" else "bilinear" for k in keys)
    if cfg.intensity == "ct":
        intensity = mt.ScaleIntensityRanged(
            "image", a_min=cfg.ct_window[0], a_max=cfg.ct_window[1], b_min=0.0, b_max=1.0, clip=True
        )
    else:
        intensity = mt.ScaleIntensityRangePercentilesd(
            "image", lower=cfg.mr_percentiles[0], upper=cfg.mr_percentiles[1], b_min=0.0, b_max=1.0, clip=True
        )
    load = mt.LoadImaged(keys, image_only=True)
    load.register(FreeSurferReader())  # picked by suffix, as MONAI picks its own readers
    chain: list[Any] = [
        load,
        mt.EnsureChannelFirstd(keys),
        CheckVolumed(keys),
        *([CheckLabelGridd(keys)] if "label" in keys else []),
        mt.Orientationd(keys, axcodes=cfg.orientation, labels=None),
        mt.Spacingd(keys, pixdim=cfg.spacing, mode=modes),
        intensity,
        mt.CropForegroundd(
            keys,
            "image",
            select_fn=partial(_above, threshold=cfg.foreground_threshold),
            margin=cfg.foreground_margin,
            allow_smaller=True,
        ),
        mt.SpatialPadd(keys, spatial_size=[cfg.roi] * 3) if cfg.pad else CheckSized("image", cfg.roi),
        # float16 (volume_dtype) only once every step has run in float32: the foreground crop sees the same values
        mt.EnsureTyped(keys, dtype=[getattr(torch, cfg.volume_dtype) if k == "image" else torch.int64 for k in keys]),
        Compactd(keys),
    ]
    return mt.Compose(chain)


def view_transforms(cfg: Contrastive3DConfig, corrupt: bool = True) -> mt.Compose:
    """contrastive3d's random crop and two independently corrupted views (MONAI ViT SSL recipe); with
    ``corrupt=False`` the crop alone (the views are made on the device, :func:`corrupt_batch`)."""
    roi = [cfg.roi] * 3
    crops = cfg.crops_per_volume
    steps: list[Any] = [
        # several crops of one volume: the recipe's RandSpatialCropSamplesd; the steps below map over them
        mt.RandSpatialCropSamplesd("image", roi_size=roi, num_samples=crops, random_size=False)
        if crops > 1
        else mt.RandSpatialCropd("image", roi_size=roi, random_size=False),
    ]
    if not corrupt:
        return mt.Compose(steps)
    steps.append(mt.CopyItemsd("image", times=2, names=["view1", "view2"]))
    return mt.Compose(steps + corruptions(cfg, ("view1", "view2")))


def corruptions(cfg: Contrastive3DConfig, views: tuple[str, ...]) -> list[Any]:
    """The recipe's corruption of each key in ``views``, drawn independently: ``OneOf[RandCoarseDropoutd``
    in-painting | out-painting``]`` then ``RandCoarseShuffled``, hole sizes scaled from 96^3 crops to ``roi``."""

    def scaled(size: int) -> int:
        return max(1, round(size * cfg.roi / 96))

    steps: list[Any] = []
    for view in views:
        steps += [
            mt.OneOf(
                [
                    mt.RandCoarseDropoutd(
                        view,
                        prob=1.0,
                        holes=cfg.inpaint_holes,
                        spatial_size=scaled(cfg.inpaint_size),
                        dropout_holes=True,
                        max_spatial_size=scaled(cfg.inpaint_max_size),
                    ),
                    mt.RandCoarseDropoutd(
                        view,
                        prob=1.0,
                        holes=cfg.outpaint_holes,
                        spatial_size=scaled(cfg.outpaint_size),
                        dropout_holes=False,
                        max_spatial_size=scaled(cfg.outpaint_max_size),
                    ),
                ]
            ),
            mt.RandCoarseShuffled(
                view, prob=cfg.shuffle_prob, holes=cfg.shuffle_holes, spatial_size=scaled(cfg.shuffle_size)
            ),
        ]
    return steps


# ---- the same corruptions on the training device, for a whole batch -----------------------------------------------
def _uniform(shape: tuple[int, ...], low: Any, high: Any, generator: torch.Generator | None, device: Any) -> Any:
    return low + (high - low) * torch.rand(shape, device=device, generator=generator)


def coarse_boxes(
    n: int, shape: tuple[int, ...], holes: int, size: int, max_size: int | None, generator: torch.Generator | None,
    device: Any,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``holes`` boxes per crop, ``(start, size)`` of shape ``[n, 3]`` each, drawn as MONAI's
    ``RandCoarseTransform.randomize`` draws them: each side uniform over ``size .. max_size`` (integers), where
    ``size`` is the previous hole's side (MONAI reassigns it in its loop, so a crop's holes never shrink; kept),
    clipped to the crop, and the corner uniform over the positions that keep the box inside."""
    dims = torch.tensor(shape, device=device)
    side = torch.full((n, len(shape)), size, device=device)
    boxes = []
    for _ in range(holes):
        if max_size is not None:
            high = torch.full_like(side, max_size).maximum(side)
            side = (side + torch.rand(side.shape, device=device, generator=generator) * (high - side + 1)).floor()
            side = side.long().minimum(high)
        valid = side.minimum(dims)
        corner = (torch.rand(side.shape, device=device, generator=generator) * (dims - valid + 1)).floor().long()
        boxes.append((corner.minimum(dims - valid), valid))
    return boxes


def boxes_mask(boxes: list[tuple[torch.Tensor, torch.Tensor]], shape: tuple[int, ...]) -> torch.Tensor:
    """``[n, D, H, W]``: the voxels inside any of the boxes. A box is the outer product of three 0/1 intervals, so
    the count of boxes over each voxel is one batched matrix product, ``(a ⊗ b)ᵀ c`` summed over the boxes."""
    corner = torch.stack([c for c, _ in boxes], 1)  # [n, holes, 3]
    side = torch.stack([s for _, s in boxes], 1)
    axes = [torch.arange(length, device=corner.device) for length in shape]
    a, b, c = (((x >= corner[..., i, None]) & (x < (corner + side)[..., i, None])).float() for i, x in enumerate(axes))
    n, holes = corner.shape[:2]
    plane = (a[..., :, None] * b[..., None, :]).reshape(n, holes, -1)  # [n, holes, D * H]
    return (torch.bmm(plane.transpose(1, 2), c) > 0.5).reshape(n, *shape)


def coarse_shuffle(views: torch.Tensor, holes: int, size: int, prob: float, generator: torch.Generator | None = None
                   ) -> torch.Tensor:  # fmt: skip
    """MONAI's ``RandCoarseShuffle(prob, holes, spatial_size=size)`` on ``[N, C, D, H, W]``: with probability
    ``prob`` per crop, the voxels of each of ``holes`` boxes of side ``size`` are permuted at random, each channel
    apart, one box after the other (as MONAI does, so overlapping boxes shuffle twice)."""
    n, c, *shape = views.shape
    device = views.device
    chosen = torch.rand(n, device=device, generator=generator) < prob
    flat = views.reshape(n, c, -1).clone()
    _, h, w = shape
    sd, sh, sw = (min(size, length) for length in shape)  # a fixed side: every crop's box has the same shape
    for corner, _ in coarse_boxes(n, tuple(shape), holes, size, None, generator, device):
        grid = (torch.arange(sd, device=device)[:, None, None] * h + torch.arange(sh, device=device)[None, :, None]) * w
        offsets = (grid + torch.arange(sw, device=device)[None, None, :]).reshape(-1)
        index = ((corner[:, 0] * h + corner[:, 1]) * w + corner[:, 2])[:, None] + offsets  # [n, side^3]
        index = index[:, None, :].expand(n, c, -1)
        patch = flat.gather(2, index)
        order = torch.rand(patch.shape, device=device, generator=generator).argsort(dim=-1)
        shuffled = torch.where(chosen[:, None, None], patch.gather(2, order), patch)
        flat.scatter_(2, index, shuffled)
    return flat.reshape(views.shape)


def corrupt_batch(
    views: torch.Tensor, cfg: Contrastive3DConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """:func:`corruptions` of each crop in ``[N, C, D, H, W]``, batched on its device, with MONAI's semantics:
    ``OneOf`` (each crop in-painted or out-painted, even odds) ``RandCoarseDropout`` with ``fill_value=None``,
    whose values are uniform over the crop's own [min, max] (in-painting fills the union of the holes,
    out-painting everything outside the union of the kept boxes), then :func:`coarse_shuffle`. No loop over
    crops and no host sync; the hole sizes are scaled from 96^3 crops to the crop's size."""
    n, _, *shape = views.shape
    device, grid = views.device, tuple(shape)

    def scaled(size: int) -> int:
        return max(1, round(size * cfg.roi / 96))

    inpaint = boxes_mask(coarse_boxes(n, grid, cfg.inpaint_holes, scaled(cfg.inpaint_size),
                                      scaled(cfg.inpaint_max_size), generator, device), grid)  # fmt: skip
    kept = boxes_mask(coarse_boxes(n, grid, cfg.outpaint_holes, scaled(cfg.outpaint_size),
                                   scaled(cfg.outpaint_max_size), generator, device), grid)  # fmt: skip
    inpainting = torch.rand(n, device=device, generator=generator) < 0.5
    replaced = torch.where(inpainting[:, None, None, None], inpaint, ~kept)[:, None]
    low = views.amin(dim=(1, 2, 3, 4), keepdim=True)
    high = views.amax(dim=(1, 2, 3, 4), keepdim=True)
    noise = _uniform(tuple(views.shape), low, high, generator, device).to(views.dtype)
    out = torch.where(replaced, noise, views)
    return coarse_shuffle(out, cfg.shuffle_holes, scaled(cfg.shuffle_size), cfg.shuffle_prob, generator)


BIAS_DEGREE, BIAS_COEFF, BIAS_PROB = 3, (0.1, 0.3), 0.8  # MONAI RandBiasField(prob=0.8, coeff_range=(0.1, 0.3))
GAMMA, GAMMA_PROB = (0.7, 1.5), 0.8  # RandAdjustContrast(prob=0.8, gamma=(0.7, 1.5))
NOISE_STD, NOISE_PROB = 0.02, 0.5  # RandGaussianNoise(prob=0.5, std=0.02): each crop's std drawn from U(0, 0.02)


def legendre_basis(shape: tuple[int, ...], degree: int, device: Any = None) -> torch.Tensor:
    """``[K, D, H, W]``: the products ``P_i(x) P_j(y) P_k(z)``, ``i + j + k <= degree``, of Legendre polynomials on
    ``linspace(-1, 1)`` per axis, in the order of MONAI's ``RandBiasField`` coefficients (K = 20 at degree 3)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=torch.float64) for n in shape]
    polys = []
    for t in axes:  # P_0..P_degree by Bonnet's recursion: (n + 1) P_{n+1} = (2n + 1) t P_n - n P_{n-1}
        p = [torch.ones_like(t), t]
        for n in range(1, degree):
            p.append(((2 * n + 1) * t * p[n] - n * p[n - 1]) / (n + 1))
        polys.append(torch.stack(p[: degree + 1]))
    terms = [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
    px, py, pz = polys
    return torch.stack([px[i][:, None, None] * py[j][None, :, None] * pz[k][None, None, :] for i, j, k in terms])


def apply_jitter(views: torch.Tensor, coeff: torch.Tensor, gamma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MONAI's bias field, gamma and noise, with explicit per-crop parameters, on a batch ``[N, 1, D, H, W]``:
    ``x * exp(sum_k coeff[n, k] B_k)``, then ``((x - min) / (range + 1e-7)) ** gamma[n] * range + min`` per crop,
    then ``+ noise``. A crop a step skips has zero coefficients, gamma 1 and zero noise (the identity)."""
    basis = legendre_basis(tuple(views.shape[2:]), BIAS_DEGREE, views.device).to(torch.float32)
    x = views.float() * torch.exp(torch.einsum("nk,kdhw->ndhw", coeff.float(), basis))[:, None]
    low = x.amin(dim=(1, 2, 3, 4), keepdim=True)
    span = x.amax(dim=(1, 2, 3, 4), keepdim=True) - low
    x = ((x - low) / (span + 1e-7)).clamp_min(0.0) ** gamma.float().view(-1, 1, 1, 1, 1) * span + low
    return (x + noise).to(views.dtype)


def jitter_batch(views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``intensity_aug`` change of each crop in a batch ``[N, 1, D, H, W]`` on its device, drawn per crop as
    MONAI's ``RandBiasField`` -> ``RandAdjustContrast`` -> ``RandGaussianNoise`` draw it: the scanner and subject
    variations a representation should not encode. Vectorised: no loop over crops, no host sync."""
    n, dev = views.shape[0], views.device
    k = len(legendre_basis((2, 2, 2), BIAS_DEGREE))

    def draw(*size: int) -> torch.Tensor:
        return torch.rand(*size, device=dev, generator=generator)

    bias_on, gamma_on, noise_on = draw(n) < BIAS_PROB, draw(n) < GAMMA_PROB, draw(n) < NOISE_PROB
    coeff = (BIAS_COEFF[0] + (BIAS_COEFF[1] - BIAS_COEFF[0]) * draw(n, k)) * bias_on[:, None]
    gamma = torch.where(gamma_on, GAMMA[0] + (GAMMA[1] - GAMMA[0]) * draw(n), torch.ones(n, device=dev))
    std = NOISE_STD * draw(n) * noise_on
    noise = torch.randn(views.shape, device=dev, generator=generator) * std.view(-1, 1, 1, 1, 1)
    return apply_jitter(views, coeff, gamma, noise)


def crop_around(image: torch.Tensor, centre: np.ndarray, roi: int) -> torch.Tensor:
    """A ``roi``^3 crop of ``[C, D, H, W]`` centred on ``centre`` (voxels), zero-padded where it leaves the volume,
    so the centre stays at the crop's centre (``SpatialCrop`` + ``BorderPad``)."""
    start = np.round(np.asarray(centre)).astype(int) - roi // 2
    shape = np.asarray(image.shape[1:])
    lo, hi = np.clip(start, 0, shape), np.clip(start + roi, 0, shape)
    crop = mt.SpatialCrop(roi_start=lo.tolist(), roi_end=hi.tolist())(image)
    before, after = lo - start, (start + roi) - hi
    border = [int(v) for pair in zip(before, after, strict=True) for v in pair]
    return mt.BorderPad(spatial_border=border)(crop) if any(border) else crop


def crop_batch(crops: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]) -> None:
    """For each ``(out, image, start)`` of a batch, copy the crop of ``image`` ``[C, D, H, W]`` whose first corner is
    ``start`` (voxels; it may lie outside the volume) into ``out`` ``[C, *roi]``, zero where it leaves the volume:
    :func:`crop_around`'s ``SpatialCrop`` + ``BorderPad`` as one copy into a batch built in place (MONAI's pair
    allocates, pads into a second tensor and tracks metadata: 3.0 of the 5.0 ms of an Alice item under cProfile,
    where this takes 0.9). Every crop's pages are announced to the kernel first
    (:func:`ssl_domains.arrayfile.will_need`), then copied: the reads of a batch from memory-mapped volumes not in
    the page cache go to the disk together rather than one page fault at a time."""
    windows = []
    for out, image, start in crops:
        source = image.as_tensor() if hasattr(image, "as_tensor") else image  # plain data, no metadata tracking
        shape, end = np.asarray(source.shape[1:]), start + np.asarray(out.shape[1:])
        lo, hi = np.clip(start, 0, shape), np.clip(end, 0, shape)
        inside = None
        if (hi > lo).all():
            inside = source[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            will_need(inside)
        windows.append((inside, lo - start, hi - start, (lo > start).any() or (hi < end).any()))
    for (out, _, _), (inside, a, b, padded) in zip(crops, windows, strict=True):
        if padded or inside is None:
            out.zero_()
        if inside is not None:
            out[:, a[0] : b[0], a[1] : b[1], a[2] : b[2]].copy_(inside)
