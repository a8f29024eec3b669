"""The MONAI transforms of the 3-D plugins: the checks that reject unusable volumes naming the file, the
deterministic preprocessing chain (``LoadImaged`` ... ``SpatialPadd``), contrastive3d's corrupted views, the
intensity jitter and the centred crop (:mod:`.data` documents the whole pipeline)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import NibabelReader
from monai.data.utils import is_supported_format

from ssl_domains import DataError


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


def _source(image: Any) -> str:
    meta = getattr(image, "meta", {}) or {}
    name = meta.get("filename_or_obj", "<volume>")
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)


def preprocessing(cfg: Any, keys: tuple[str, ...]) -> mt.Compose:
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
        mt.EnsureTyped(keys, dtype=[torch.float32 if k == "image" else torch.int64 for k in keys]),
    ]
    return mt.Compose(chain)


def view_transforms(cfg: Any) -> mt.Compose:
    """contrastive3d's random crop and two independently corrupted views (MONAI ViT SSL recipe)."""
    roi = [cfg.roi] * 3
    crops = cfg.crops_per_volume
    steps: list[Any] = [
        # several crops of one volume: the recipe's RandSpatialCropSamplesd; the steps below map over them
        mt.RandSpatialCropSamplesd("image", roi_size=roi, num_samples=crops, random_size=False)
        if crops > 1
        else mt.RandSpatialCropd("image", roi_size=roi, random_size=False),
        mt.CopyItemsd("image", times=2, names=["view1", "view2"]),
    ]
    return mt.Compose(steps + corruptions(cfg, ("view1", "view2")))


def corruptions(cfg: Any, views: tuple[str, ...]) -> list[Any]:
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
