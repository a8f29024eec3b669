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


def intensity_jitter() -> mt.Compose:
    """A random intensity change of one crop in [0, 1]: MONAI ``RandBiasField`` (a smooth multiplicative field),
    ``RandAdjustContrast`` (gamma) and ``RandGaussianNoise``, the scanner/subject variations a representation
    should not encode (``intensity_aug``)."""
    return mt.Compose(
        [
            mt.RandBiasField(prob=0.8, coeff_range=(0.1, 0.3)),
            mt.RandAdjustContrast(prob=0.8, gamma=(0.7, 1.5)),
            mt.RandGaussianNoise(prob=0.5, std=0.02),
        ]
    )


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
