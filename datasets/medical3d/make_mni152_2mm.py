"""Rebuild the 2 mm MNI ICBM152 files in this folder from nilearn's copy of the template.

    pip install nilearn && python datasets/medical3d/make_mni152_2mm.py

The T1 and the grey/white-matter probability maps (1 mm, 197 x 233 x 189, uint8) are averaged over 2 x 2 x 2
blocks (the last odd voxel of each axis is dropped), which keeps the world frame: the new affine scales the voxel
axes by 2 and moves the origin to the centre of the first block. The tissue labels are 1 where p(GM) > 0.5,
2 where p(WM) > 0.5 and 0 elsewhere (background and CSF), as in ``../shared/reference/medical3d.md`` §6.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
NAMES = {"t1": "images/mni152_t1_2mm.nii.gz", "gm": "labels/mni152_gm_2mm.nii.gz", "wm": "labels/mni152_wm_2mm.nii.gz"}


def block_mean(volume: np.ndarray) -> np.ndarray:
    """Mean over 2 x 2 x 2 blocks."""
    d, h, w = (s // 2 * 2 for s in volume.shape)
    v = volume[:d, :h, :w].astype(np.float64)
    return v.reshape(d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(1, 3, 5))


def main() -> None:
    import nilearn
    from nilearn.datasets import load_mni152_template  # noqa: F401 - only to locate the package's data folder

    source = Path(nilearn.__file__).parent / "datasets" / "data"
    maps = {}
    for key in NAMES:
        image = nib.load(source / f"mni_icbm152_{key}_tal_nlin_sym_09a_converted.nii.gz")
        affine = image.affine.copy()
        affine[:3, :3] *= 2
        affine[:3, 3] += image.affine[:3, :3] @ np.full(3, 0.5)
        maps[key] = (np.round(block_mean(np.asarray(image.dataobj))).astype(np.uint8), affine)
    for key, rel in NAMES.items():
        data, affine = maps[key]
        nib.save(nib.Nifti1Image(data, affine), HERE / rel)
    gm, wm = maps["gm"][0] / 255.0, maps["wm"][0] / 255.0
    tissue = np.zeros(gm.shape, dtype=np.uint8)
    tissue[gm > 0.5] = 1
    tissue[wm > 0.5] = 2
    nib.save(nib.Nifti1Image(tissue, maps["t1"][1]), HERE / "labels/mni152_tissue_2mm.nii.gz")


if __name__ == "__main__":
    main()
