"""Finding the volumes a run reads: a folder, a glob, one file, a manifest CSV, or a Medical Segmentation
Decathlon ``dataset.json``; NIfTI files or DICOM series.

Every problem is a :class:`~ssl_domains.DataError` that names the file and says what to do. Reading the voxels
is MONAI's job (``LoadImaged`` in ``transforms.py``); this module only decides *which* files are volumes.
"""

from __future__ import annotations

import csv
import glob
import math
from dataclasses import dataclass
from pathlib import Path

from ssl_domains import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# other single-file volumes MONAI reads: FreeSurfer's MGH/MGZ (nibabel, through transforms.FreeSurferReader) and
# NRRD (MONAI's NrrdReader, with pynrrd)
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".mgz", ".mgh", ".nrrd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# formats a user may well hand us that we do not read: say how to convert instead of skipping them silently
UNSUPPORTED_SUFFIXES = (".mha", ".mhd", ".nhdr", ".hdr", ".img", ".npy", ".npz", ".h5")
GLOB_CHARS = "*?["
DECATHLON = "dataset.json"  # the Medical Segmentation Decathlon's datalist, beside imagesTr/ labelsTr/ imagesTs/


@dataclass(frozen=True)
class VolumeRecord:
    """One volume: a NIfTI file or a DICOM series folder, with an optional label map (manifest ``label``)."""

    image: Path
    label: Path | None = None

    @property
    def name(self) -> str:
        """The file name without its NIfTI suffix (the DICOM folder's name for a series)."""
        name = self.image.name
        for suffix in VOLUME_SUFFIXES[::-1]:
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name


def _is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_file(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or (path.suffix == "" and _has_dicom_magic(path))


def _unsupported(path: Path) -> DataError:
    return DataError(
        f"{path}: this format is not read by the medical plugins; convert it to NIfTI (.nii.gz), for example "
        "with SimpleITK (sitk.WriteImage(sitk.ReadImage(path), 'out.nii.gz')) or nibabel, or pass a DICOM series "
        "folder"
    )


def _volumes_among(files: list[Path]) -> list[VolumeRecord]:
    """NIfTI files as themselves, DICOM slices as their series folder; a known unsupported format is an error,
    anything else (notes, spreadsheets) is not a volume and is passed over."""
    records: list[VolumeRecord] = []
    dicom_dirs: set[Path] = set()
    for path in files:
        if _is_volume_file(path):
            records.append(VolumeRecord(path))
        elif path.name.lower().endswith(UNSUPPORTED_SUFFIXES):
            raise _unsupported(path)
        elif _is_dicom_file(path):
            dicom_dirs.add(path.parent)
    records += [VolumeRecord(folder) for folder in sorted(dicom_dirs)]
    return sorted(records, key=lambda r: str(r.image))


def _folder_files(root: Path) -> list[Path]:
    """Every file below ``root``, hidden files and folders left out."""
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]


def _read_manifest(path: Path) -> list[VolumeRecord]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the manifest CSV ({exc})") from None
    if not rows or "image" not in rows[0]:
        raise DataError(f"{path}: a manifest needs a header with an 'image' column (and optionally 'label')")
    records = []
    for line, row in enumerate(rows, start=2):
        image = (row.get("image") or "").strip()
        if not image:
            raise DataError(f"{path}, line {line}: empty 'image' entry")
        label = (row.get("label") or "").strip()
        image_path = (path.parent / image).resolve()
        label_path = (path.parent / label).resolve() if label else None
        for p in (image_path, label_path):
            if p is not None and not p.exists():
                raise DataError(f"{path}, line {line}: {p} does not exist (paths are relative to the manifest)")
        records.append(VolumeRecord(image_path, label_path))
    unlabelled = [line for line, r in enumerate(records, start=2) if r.label is None]
    if unlabelled and len(unlabelled) < len(records):
        raise DataError(
            f"{path}: {'line' if len(unlabelled) == 1 else 'lines'} {', '.join(map(str, unlabelled[:10]))} "
            f"{'has' if len(unlabelled) == 1 else 'have'} no 'label' while other lines do; give every "
            "line a label map, or leave the 'label' column empty on all of them (labels are used all together)"
        )
    return records


def _read_decathlon(path: Path) -> list[VolumeRecord]:
    """The ``training`` list of a Medical Segmentation Decathlon ``dataset.json`` (image and label map), through
    MONAI's ``load_decathlon_datalist``; its ``test`` images have no labels and are left out (labels are used all
    together: pass ``imagesTs`` itself to pretrain on those)."""
    import json

    from monai.data import load_decathlon_datalist

    try:
        entries = load_decathlon_datalist(path, is_segmentation=True, data_list_key="training", base_dir=path.parent)
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path}: not a Decathlon dataset.json ({type(exc).__name__}: {exc}); it needs a 'training' list of "
            '{"image": ..., "label": ...} entries, paths relative to the file'
        ) from None
    records = []
    for k, entry in enumerate(entries):
        image, label = Path(entry["image"]), Path(entry["label"]) if entry.get("label") else None
        for p in (image, label):
            if p is not None and not p.exists():
                raise DataError(f"{path}: training entry {k} names {p}, which does not exist")
        records.append(VolumeRecord(image, label))
    if not records:
        raise DataError(f"{path}: the 'training' list is empty")
    return records


def find_volumes(data: str | Path) -> list[VolumeRecord]:
    """The volumes named by ``data``: a NIfTI file, a DICOM series folder, a folder searched recursively (every
    ``.nii``/``.nii.gz`` file and every folder of DICOM slices), a glob pattern, a manifest CSV with an
    ``image`` column and an optional ``label`` column (paths relative to the CSV), or a Decathlon task folder
    (``dataset.json`` beside ``imagesTr``/``labelsTr``) or its ``dataset.json``."""
    text = str(data)
    if any(ch in text for ch in GLOB_CHARS) and not Path(text).exists():
        matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
        files = {file for path in matches for file in (_folder_files(path) if path.is_dir() else [path])}
        records = _volumes_among(sorted(files))
        if not records:
            raise DataError(f"the pattern {text!r} matches no NIfTI file or DICOM folder")
        return records
    path = Path(text)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a folder, a NIfTI file, a glob or a manifest CSV")
    if path.is_dir() and (path / DECATHLON).is_file():  # not a folder scan: labelsTr would be read as images
        return _read_decathlon(path / DECATHLON)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _read_manifest(path)
        if path.suffix.lower() == ".json":
            return _read_decathlon(path)
        if _is_volume_file(path):
            return [VolumeRecord(path)]
        if path.name.lower().endswith(UNSUPPORTED_SUFFIXES):
            raise _unsupported(path)
        raise DataError(
            f"{path}: not a NIfTI file (.nii / .nii.gz), a manifest (.csv) or a Decathlon dataset.json; pass a "
            "folder of volumes, a DICOM series folder, or one of those"
        )
    records = _volumes_among(_folder_files(path))
    if not records:
        raise DataError(f"{path} holds no NIfTI file (.nii, .nii.gz) and no DICOM series")
    return records


def _nrrd_grid(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and voxel size of an NRRD volume, from its header (the length of each space direction)."""
    import numpy as np

    try:
        import nrrd

        header = nrrd.read_header(str(path))
    except ImportError:
        raise DataError(f"{path}: reading NRRD needs pynrrd: pip install pynrrd") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as a volume (its NRRD header: {exc}); is the file complete?") from None
    directions = np.asarray(header.get("space directions", np.eye(3)), dtype=np.float64)
    directions = directions[np.isfinite(directions).all(1)]  # a 'none' row (a channel axis) is NaN in pynrrd
    return tuple(int(n) for n in header["sizes"])[-3:], tuple(np.linalg.norm(directions, axis=1))[-3:]


def preprocessed_bytes(record: VolumeRecord, spacing: tuple[float, float, float], value_bytes: int = 4) -> int:
    """An upper bound on the bytes ``record`` takes once preprocessed (an image of ``value_bytes`` a voxel, 4 for
    float32 or 2 for ``volume_dtype: float16``, and an int64 label map, resampled to ``spacing``, before the
    foreground crop), read from the file's header alone (NIfTI, MGH, NRRD); a DICOM series is taken at its files'
    size as int16 voxels. What ``cache: auto`` weighs against the memory budget."""
    if record.image.name.lower().endswith(".nrrd"):
        shape, zooms = _nrrd_grid(record.image)
    elif _is_volume_file(record.image):
        import nibabel

        try:
            header = nibabel.load(str(record.image)).header
        except Exception as exc:
            raise DataError(
                f"{record.image}: cannot be read as a volume (its header: {exc}); check that the file is complete"
            ) from None
        shape, zooms = header.get_data_shape()[:3], header.get_zooms()[:3]
    if _is_volume_file(record.image):
        voxels = math.prod(
            math.ceil(n * abs(float(z or 1.0)) / s) for n, z, s in zip(shape, zooms, spacing, strict=False)
        )  # 2-D: refused later
    else:
        voxels = sum(f.stat().st_size for f in record.image.iterdir() if f.is_file()) // 2
    return voxels * (value_bytes + (8 if record.label is not None else 0))
