"""Small generated volumes for the conformance kit and the tests: ellipsoid phantoms as NIfTI or DICOM series.

The phantoms are layered ellipsoids (a "skull", "grey" and "white" shells, a few "nuclei") with smooth
texture and noise, so crops hold structure at several scales and a label map comes for free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def phantom(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``(image, label)`` pair: float32 intensities in about [0, 1000] and uint8 labels 0..3."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    centre = rng.uniform(-0.08, 0.08, size=(3, 1, 1, 1))
    radii = rng.uniform(0.75, 0.92, size=(3, 1, 1, 1))
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(0))
    label = np.zeros(shape, dtype=np.uint8)
    label[r < 0.95] = 1
    label[r < 0.8] = 2
    label[r < 0.55] = 3
    for _ in range(3):  # "nuclei": small bright ellipsoids inside the white matter
        c = rng.uniform(-0.3, 0.3, size=(3, 1, 1, 1))
        label[np.sqrt((((grid - c) / rng.uniform(0.08, 0.16)) ** 2).sum(0)) < 1] = 1
    image = np.choose(label, [0.0, 700.0, 450.0, 600.0]).astype(np.float32)
    texture = np.cos(7 * grid[0] + rng.uniform(0, 6)) * np.sin(5 * grid[1] + rng.uniform(0, 6)) * np.cos(4 * grid[2])
    image += (label > 0) * (40.0 * texture + rng.normal(0, 15.0, shape)).astype(np.float32)
    return image.astype(np.float32), label


def write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Save ``array`` as NIfTI with a RAS affine of the given voxel size."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def write_dicom_series(folder: Path, array: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Save ``array`` ``[X, Y, Z]`` as one CT DICOM file per axial slice (int16, rescale 1 / 0) in ``folder``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    for z in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{z:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.PatientName, ds.PatientID, ds.InstanceNumber = "Phantom", "0", z + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(z * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (Y), column spacing (X)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0.0, 1.0
        ds.PixelData = np.ascontiguousarray(array[:, :, z].T).astype(np.int16).tobytes()
        ds.save_as(str(folder / f"slice{z:03d}.dcm"), enforce_file_format=True)
    return folder


def write_example_volumes(root: Path, count: int = 3, shape: tuple[int, int, int] = (40, 44, 36)) -> Path:
    """``count`` phantom NIfTI volumes (1.5 mm voxels) in ``root``, returned as the ``--data`` folder."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = phantom(shape, seed=i)
        write_nifti(root / f"phantom_{i}.nii.gz", image, spacing=(1.5, 1.5, 1.5))
    return root
