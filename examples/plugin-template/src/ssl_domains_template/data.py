"""Reading feature matrices and serving them as dict batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_domains import DataError, FittedDataModule
from ssl_domains.data import eval_loader, random_split_indices, train_loader

from .plugin import DAEConfig


def read_matrix(data: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Features ``[rows, features]`` (float32) and optional labels from a ``.npy`` file or a directory."""
    features_path = data / "features.npy" if data.is_dir() else data
    if features_path.suffix != ".npy" or not features_path.is_file():
        raise DataError(f"{data}: expected a .npy file or a directory holding features.npy")
    try:
        x = np.load(features_path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{features_path} is not a readable .npy file ({exc}); re-save it with numpy.save") from None
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{features_path}: expected a non-empty [rows, features] matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{features_path}: expected numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DataError(
            f"{features_path}: {len(rows)} rows hold NaN or inf (first: row {rows[0]}); impute or drop them"
        )
    labels = None
    labels_path = data / "labels.npy" if data.is_dir() else None
    if labels_path is not None and labels_path.is_file():
        try:
            labels = np.load(labels_path, allow_pickle=False).astype(np.int64).reshape(-1)
        except (ValueError, OSError) as exc:
            raise DataError(f"{labels_path}: not a readable .npy of integer labels ({exc}); re-save it") from None
        if len(labels) != len(x):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(x)} rows; give one label per row")
    return x, labels


class _Rows(Dataset):
    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None, index: np.ndarray) -> None:
        self.x, self.labels, self.index = x, labels, torch.as_tensor(index, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> int:
        return int(self.index[i])

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(rows, dtype=torch.long)
        batch = {"x": self.x[idx], "id": idx}
        if self.labels is not None:
            batch["label"] = self.labels[idx]
        return batch


class VectorDataModule(FittedDataModule[DAEConfig]):
    """Standardises features with training-set statistics and yields ``{"x", "id", "label"?}`` batches."""

    def read(self, stage: str | None) -> None:
        x, labels = read_matrix(self.data)
        self.train_idx, self.val_idx = random_split_indices(
            len(x), (1 - self.cfg.val_fraction, self.cfg.val_fraction), seed=0
        )
        # fitted on the training rows only; restored from the run when embedding new data
        mean = self.fit("mean", lambda: torch.from_numpy(x[self.train_idx].mean(0)))
        std = self.fit("std", lambda: torch.from_numpy(x[self.train_idx].std(0)).clamp_min(1e-6))
        if x.shape[1] != len(mean):
            raise DataError(f"{self.data}: {x.shape[1]} features, but the run was trained on {len(mean)}")
        self.x = (torch.from_numpy(x) - mean) / std
        self.labels = None if labels is None else torch.from_numpy(labels)

    def input_spec(self) -> dict[str, Any]:
        """Feature count and the standardisation fitted on the training rows."""
        return {
            "num_features": self.num_features,
            "standardisation": {"mean": self.fitted["mean"].tolist(), "std": self.fitted["std"].tolist()},
        }

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    def _rows(self, index: np.ndarray) -> _Rows:
        return _Rows(self.x, self.labels, index)

    def train_dataloader(self) -> Any:
        rows = self._rows(self.train_idx)
        return train_loader(rows, batch_size=self.cfg.batch_size, collate_fn=rows.collate)

    def val_dataloader(self) -> Any:
        rows = self._rows(self.val_idx)
        return eval_loader(rows, batch_size=self.cfg.batch_size, collate_fn=rows.collate)

    def predict_dataloader(self) -> Any:
        rows = self._rows(np.arange(len(self.x)))
        return eval_loader(rows, batch_size=self.cfg.batch_size, collate_fn=rows.collate)


def write_example_data(root: Path, rows: int = 256, features: int = 24, classes: int = 4) -> Path:
    """Four Gaussian clusters with labels: small enough for CI, structured enough to learn."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(classes, features))
    labels = rng.integers(0, classes, size=rows)
    x = centres[labels] + rng.normal(0, 1, size=(rows, features))
    out = Path(root) / "vectors"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "features.npy", x.astype(np.float32))
    np.save(out / "labels.npy", labels)
    return out
