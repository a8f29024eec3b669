"""The training and prediction datasets of :class:`~.data.MedicalDataModule`: crops drawn from its preprocessed
volumes (:mod:`.data` describes the random part). A training batch is built in place (``__getitems__`` into
:func:`ssl_domains.data.batch_tensors`, one shared-memory segment from a worker); ``__getitem__`` serves the
loader's item-by-item fallback when a batch holds an unreadable volume, and MONAI's loader corruptions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai import transforms as mt
from torch.utils.data import Dataset, default_collate

from ssl_domains.data import batch_tensors

from .correspondence import corresponding_point, inside
from .transforms import corruptions, crop_batch, view_transforms

if TYPE_CHECKING:
    from .data import MedicalDataModule


def _copied_unless_cached(module: MedicalDataModule, crops: list[Any]) -> list[Any]:
    """The crops a batch has drawn and not copied yet. With ``cache: none`` an item's are copied at once, so that
    its freshly preprocessed volumes are freed; cached volumes (memory maps, shared arrays) wait for the batch's
    one :func:`.transforms.crop_batch`."""
    if module.cache == "none":
        crop_batch(crops)
        return []
    return crops


class ViewCrops(Dataset):
    def __init__(self, module: MedicalDataModule) -> None:
        self.module, self.transform = module, view_transforms(module.cfg, corrupt=not module.corrupts_on_device)

    def __len__(self) -> int:
        return len(self.module.records) * self.module.cfg.samples_per_volume

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        """``crops_per_volume`` items of one volume, cropped and corrupted by MONAI (``corruptions_on: loader``);
        :func:`flatten_collate` puts them side by side in a batch."""
        v = index % len(self.module.records)
        self.transform.set_random_state(seed=int(torch.randint(2**31 - 1, ())))
        samples = self.transform({"image": self.module.volume(v)["image"]})
        items = []
        for out in samples if isinstance(samples, list) else [samples]:
            item = {"image": torch.as_tensor(out["image"]).float(), "id": index, "volume": v}
            if "view1" in out:
                item.update(view1=torch.as_tensor(out["view1"]).float(), view2=torch.as_tensor(out["view2"]).float())
            items.append(item)
        return items

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor] | list[list[dict[str, Any]]]:
        """With ``corruptions_on: device``, the batch's crops built in place (:func:`ssl_domains.data.batch_tensors`):
        ``crops_per_volume`` crops of each drawn volume at uniform random corners, as ``RandSpatialCropSamplesd``
        draws them, each copied once from the memory-mapped volume into the storage the worker hands on."""
        m = self.module
        if not m.corrupts_on_device:
            return [self[i] for i in indices]
        roi, k = m.cfg.roi, m.cfg.crops_per_volume
        n = len(indices) * k
        out = batch_tensors({"image": ((n, 1, roi, roi, roi), torch.float32), "id": ((n,), torch.int64),
                             "volume": ((n,), torch.int64)})  # fmt: skip
        crops = []
        for row, index in enumerate(indices):
            v = index % len(m.records)
            image = m.volume(v)["image"]
            room = torch.as_tensor(np.maximum(np.asarray(image.shape[1:]) - roi, 0) + 1)
            corners = (torch.rand(k, 3) * room).long().numpy()  # uniform over the valid corners, per axis
            crops += [(out["image"][row * k + j], image, corners[j]) for j in range(k)]
            out["id"][row * k : (row + 1) * k], out["volume"][row * k : (row + 1) * k] = index, v
            crops = _copied_unless_cached(m, crops)
        crop_batch(crops)
        return out


def flatten_collate(items: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Batch every crop of every drawn volume: ``batch_size`` volumes x ``crops_per_volume`` crops."""
    return default_collate([crop for crops in items for crop in crops])


_POINT_DRAWS = 8


class PairCrops(Dataset):
    """Alice's pairs; ``query_view``/``anchor_view``, the student's copies, are made on the training device
    (:meth:`MedicalDataModule.on_after_batch_transfer`), so a worker sends each crop once."""

    def __init__(self, module: MedicalDataModule) -> None:
        self.module = module

    def __len__(self) -> int:
        return len(self.module.records) * self.module.cfg.samples_per_volume

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The batch built in place (:func:`ssl_domains.data.batch_tensors`): each crop copied once, from the
        memory-mapped volume into the storage the worker hands the main process."""
        m, n, roi = self.module, len(self.module.records), self.module.cfg.roi
        crop, count = ((len(indices), 1, roi, roi, roi), torch.float32), ((len(indices),), torch.int64)
        point = ((len(indices), 3), torch.float32)
        out = batch_tensors({"query": crop, "anchor": crop, "id": count, "volume": count, "partner": count,
                             "query_point": point, "anchor_point": point})  # fmt: skip
        crops = []
        for row, index in enumerate(indices):
            a = index % n
            b = (a + int(torch.randint(1, n, ()))) % n
            points = m.foreground_points[a]
            # a point whose counterpart is outside B's field of view (``world`` correspondence, a smaller scan)
            # would pair it with B's border: draw again, a few times, before settling for the clipped point.
            # ``box`` maps box onto box, so it draws once (a rare sub-voxel overshoot at a border is clipped)
            for _ in range(_POINT_DRAWS if m.cfg.correspondence == "world" else 1):
                point_a = points[int(torch.randint(len(points), ()))]
                point_b = corresponding_point(point_a, m.geometry[a], m.geometry[b], m.cfg.correspondence, clip=False)
                if inside(point_b, m.geometry[b]):
                    break
            point_b = np.clip(point_b, 0.0, m.geometry[b]["shape"] - 1.0)
            for name, volume, centre in (("query", a, point_a), ("anchor", b, point_b)):
                corner = np.round(np.asarray(centre)).astype(int) - roi // 2  # as crop_around centres it
                crops.append((out[name][row], m.volume(volume)["image"], corner))
            out["id"][row], out["volume"][row], out["partner"][row] = index, a, b
            out["query_point"][row], out["anchor_point"][row] = torch.from_numpy(point_a), torch.from_numpy(point_b)
            crops = _copied_unless_cached(m, crops)
        crop_batch(crops)
        return out


class CorrespondingViews(Dataset):
    """contrastive3d with ``positives: corresponding``: the two views are corrupted crops at corresponding points
    of two *different* volumes (Alice's pairs, :class:`PairCrops`), so NT-Xent pulls together the same anatomy
    of two subjects (the domain-specific positives of Chaitanya et al., NeurIPS 2020) instead of two
    corruptions of one crop; each view is reconstructed to its own clean crop."""

    def __init__(self, module: MedicalDataModule) -> None:
        self.pairs = PairCrops(module)
        self.corrupt = mt.Compose(corruptions(module.cfg, ("view1", "view2")))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.pairs.module.corrupts_on_device:
            return self._corrupted(index)
        return {k: v[0] for k, v in self.__getitems__([index]).items()}  # type: ignore[union-attr]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        if not self.pairs.module.corrupts_on_device:  # MONAI's corruptions, item by item in the worker
            return [self._corrupted(i) for i in indices]
        pairs = self.pairs.__getitems__(indices)
        return {"image": pairs["query"], "image2": pairs["anchor"], "id": pairs["id"], "volume": pairs["volume"],
                "partner": pairs["partner"]}  # fmt: skip

    def _corrupted(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        self.corrupt.set_random_state(seed=int(torch.randint(2**31 - 1, ())))
        # copies: MONAI's holes and shuffles write into their input's memory, and the crops are the clean targets
        views = self.corrupt({"view1": pair["query"].clone(), "view2": pair["anchor"].clone()})
        return {"image": pair["query"], "image2": pair["anchor"], "id": pair["id"], "volume": pair["volume"],
                "partner": pair["partner"], "view1": torch.as_tensor(views["view1"]).float(),
                "view2": torch.as_tensor(views["view2"]).float()}  # fmt: skip


class Volumes(Dataset):
    def __init__(self, module: MedicalDataModule) -> None:
        self.module = module

    def __len__(self) -> int:
        return len(self.module.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": torch.as_tensor(self.module.volume(index)["image"]).float(), "id": index}
