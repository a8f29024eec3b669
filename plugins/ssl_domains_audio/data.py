"""The audio data module shared by TERA and SSAST: clips → features → padded, length-grouped dict batches.

Batches carry ``features`` (float32 ``[N, T, F]``, zero-padded after the last frame of each clip), ``length``
(int64 ``[N]``, valid frames), ``id`` (the clip's index in the sorted clip list), ``label`` (class index, -1 when
the file name does not match ``label_regex``) and ``split`` (test for ``test_speakers``, train otherwise).

Training batches are random crops of at most ``crop_frames`` frames, grouped by length
(:class:`ssl_domains.data.LengthGroupedSampler`) so that padding stays small. The clean view
(``predict_dataloader``) holds each clip whole, centre-cropped to ``max_frames``.

Where the clips are not kept in memory (``feature_extraction: auto``, or ``device``), the training loader's workers
only decode and crop: a batch holds ``waveform`` (the samples each crop's frames read, zero-padded), ``length`` and
``warp`` (the VTLP factor of each row), and :meth:`AudioDataModule.on_after_batch_transfer` turns it into the
``features`` above on the training device, batched, frame for frame equal to the workers' features (log-mel's
per-utterance CMVN is then over the crop, as in s3prl's online pretraining pipeline, not over the whole clip). On a
GPU this leaves the workers a tenth of the work: decoding 15 s of FLAC takes ~2 ms of a core, its features ~3 ms.

Fitted state, saved with the run and reused at embed time: the class names and, for SSAST's Kaldi fbank, the
dataset mean and std (from ``norm_mean``/``norm_std`` when set, else computed from the training clips on the
first run; ``ssl-domains run ssast stats`` prints them), and for TERA with ``cmvn: dataset`` the per-band mean and
std of the training clips' log-mel frames.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN, DataError
from ssl_domains.data import DurationBatchSampler, PackedList, eval_loader, train_loader
from ssl_domains.datamodule import FittedDataModule
from ssl_domains.indexcache import cached_index
from ssl_domains.memory import fits_in_memory

from . import features
from .formats import Clip, find_clips, probe, read_audio
from .plugin import AudioDataConfig

log = logging.getLogger("ssl_domains")
INDEX_VERSION = 2  # bump when the cached (clips, lengths) change meaning


def clip_features(clip: Clip, kind: str, n_mels: int, min_seconds: float, f_max: float | None = None) -> torch.Tensor:
    """Features ``[T, F]`` of one clip; a clip too short for a single frame is an error naming the file."""
    samples = read_audio(clip.path, features.SAMPLE_RATE, min_seconds)
    feats = features.compute(samples, kind, n_mels, f_max)
    if feats.shape[0] == 0:
        raise DataError(f"{clip.path}: too short for one 25 ms frame; remove the clip")
    return feats


def dataset_statistics(feature_list: Iterable[torch.Tensor], per_band: bool = False) -> tuple[Any, Any]:
    """Mean and std over every frame (and bin, unless ``per_band``) of the given clips.

    Scalars are SSAST's ``get_norm_stats.py``; per-band lists are global CMVN. The clips are summed one at a time
    in float64 (count, sum, sum of squares), so memory holds one clip, not the 5,000 a corpus may give (0.8 GB
    of float64 fbank frames per 1,000 clips of 12 s).
    """
    count, total, squares = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for feats in feature_list:
        frames = feats.double()
        count += frames.shape[0] if per_band else frames.numel()
        total = total + (frames.sum(0) if per_band else frames.sum())
        squares = squares + (frames.square().sum(0) if per_band else frames.square().sum())
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt()
    if per_band:
        return mean.tolist(), std.clamp(min=1e-5).tolist()
    return float(mean), float(std)


class _Items(Dataset):
    def __init__(self, module: AudioDataModule, indices: np.ndarray, train: bool) -> None:
        self.module, self.indices, self.train = module, indices, train

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor] | tuple[int, torch.Tensor, int, float]:
        index = int(self.indices[i])
        spread = self.module.cfg.vtlp if self.train else 0.0
        alpha = 1.0 + spread * (2 * float(torch.rand(())) - 1) if spread > 0 else None
        if self.train and self.module.features_on_device:  # decode and crop here; the features come on the device
            return self.module.crop_window(index, alpha)
        feats = self.module.features_of(index, warp=alpha)
        limit = self.module.cfg.crop_frames if self.train else self.module.cfg.max_frames
        if feats.shape[0] > limit:
            start = _crop_start(feats.shape[0], limit) if self.train else (feats.shape[0] - limit) // 2
            feats = feats[start : start + limit]
        return index, feats


def _crop_start(frames: int, limit: int) -> int:
    """A random training crop (s3prl's and SSAST's): its first frame, uniform over the clip."""
    return int(torch.randint(0, frames - limit + 1, ())) if frames > limit else 0


class AudioDataModule(FittedDataModule[AudioDataConfig]):
    """Reads a folder or manifest of clips, computes ``kind`` features, serves batches.

    ``kind``: "logmel" (per-utterance CMVN), "logmel_global" (log-mel normalised per band with training-set
    statistics) or "fbank" (Kaldi fbank, ``(x - mean) / (2 std)`` with scalar training-set statistics).

    ``pad_multiple``: padded lengths are rounded up to a multiple of it (SSAST's patch width).
    """

    def __init__(self, path: Path, cfg: AudioDataConfig, kind: str, pad_multiple: int = 1) -> None:
        super().__init__(path, cfg)
        self.kind, self.pad_multiple = kind, pad_multiple
        self.std_factor = 2.0 if kind == "fbank" else 1.0  # SSAST divides by 2 std
        self._cache: dict[int, torch.Tensor] = {}
        self.in_memory = False
        self.features_on_device = False  # training batches carry waveform crops (set by read)

    def input_spec(self) -> dict[str, Any]:
        """Sample rate, the feature pipeline (:mod:`.features`) and the normalisation the run fitted."""
        norm = self.fitted.get("norm")
        if self.kind == "logmel":
            normalisation: Any = "per-utterance CMVN (each band's mean and std over the clip's frames)"
        else:
            mean, std = norm
            normalisation = {"mean": mean, "std": std, "formula": f"(x - mean) / ({self.std_factor:g} * std)"}
        return {
            "sample_rate": features.SAMPLE_RATE,
            "channels": "mono",
            "features": "Kaldi fbank (torchaudio.compliance.kaldi, Hanning, no dither)"
            if self.kind == "fbank"
            else "log-mel (torchaudio MelSpectrogram, HTK, power 2, log(x + 1e-10), waveform RMS at -25 dB)",
            "mel_bins": int(self.cfg.num_mel_bins),
            "window": f"{features.WINDOW} samples (25 ms), hop {features.HOP} (10 ms)",
            "f_max": self.cfg.f_max,
            "normalisation": normalisation,
        }

    @property
    def num_classes(self) -> int:
        return len(self.fitted.get("classes", []))

    # ---- reading ---------------------------------------------------------------------------------------------
    def features_of(self, index: int, warp: float | None = None) -> torch.Tensor:
        """Normalised features ``[T, F]`` of clip ``index`` (cached after the first read when ``cache``), with the
        spectrum scaled in frequency by ``warp`` first when given (:func:`features.warp_frequency`, VTLP)."""
        feats = self._raw(index)
        if warp is not None:
            feats = features.warp_frequency(feats, warp, *features.band_range(self.kind, self.cfg.f_max))
        norm = self.fitted.get("norm")
        if norm is None:
            return feats
        mean, std = torch.as_tensor(norm[0], dtype=feats.dtype), torch.as_tensor(norm[1], dtype=feats.dtype)
        return (feats - mean) / (self.std_factor * std)

    def read(self, stage: str | None) -> None:
        clips, samples = self._index(self.data)
        self.num_source_clips = len(clips)  # clips of ``path``: the ones embed and the probes see
        if stage != "predict" and self.cfg.unlabelled:  # unlabelled extras feed pretraining only, not embed
            parts: list[Iterable[Clip]] = [clips]
            for folder in self.cfg.unlabelled:
                extra, extra_samples = self._index(Path(folder))
                parts.append(Clip(c.path, None, None) for c in extra)
                samples = np.concatenate([samples, extra_samples])
            clips = PackedList(itertools.chain(*parts))
        # packed (pickles in two arrays): as a list, 280k LibriSpeech-layout clips took 269 MB and each forked loader
        # worker copied 159 MB of it; packed, 100 MB that the workers share (benchmarks/index_memory.py)
        self.clips = clips if isinstance(clips, PackedList) else PackedList(clips)
        names, labels_of = [], []
        for clip in self.clips:  # one pass: each access unpickles
            names.append(clip.speaker or "")
            labels_of.append(clip.label)
        unknown = sorted(set(self.cfg.test_speakers) - set(names))
        if unknown:
            raise DataError(
                f"{self.data}: test_speakers {unknown} match no clip; speakers found: {sorted(set(names) - {''})}"
            )
        self.speakers = speakers = np.array(names)
        test = np.isin(speakers, list(self.cfg.test_speakers))
        self.split = torch.as_tensor(np.where(test, SPLIT_TEST, SPLIT_TRAIN), dtype=torch.long)
        labels = {label for label in labels_of if label is not None}
        classes = self.fit("classes", lambda: sorted(labels, key=_natural))
        index = {name: i for i, name in enumerate(classes)}
        self.label = torch.as_tensor([index.get(label, -1) for label in labels_of], dtype=torch.long)
        self.train_indices = np.flatnonzero(~test)
        if len(self.train_indices) == 0:
            raise DataError(f"{self.data}: every clip belongs to test_speakers; nothing is left to pretrain on")
        self.lengths = np.array([features.num_frames(int(n), self.kind) for n in samples], dtype=np.int64)
        self.in_memory = self.cfg.feature_extraction != "device" and self._choose_cache()
        self.features_on_device = self.cfg.feature_extraction == "device" or (
            self.cfg.feature_extraction == "auto" and not self.in_memory
        )
        if self.in_memory:  # decode everything once: epochs cost no decoding, and errors surface before training
            for i in range(len(self.clips)):
                self.features_of(i)
        elif self.cfg.num_workers == 0:
            log.warning("%s: clips are decoded in the training loop; set num_workers (4-8 per GPU)", self.data)
        if self.kind in ("fbank", "logmel_global"):
            self.fit("norm", self._normalisation)

    def provenance(self, ids: np.ndarray) -> dict[str, Any]:
        """The clips' files (as found under ``data`` or listed by its manifest) and, where known, speakers."""
        out: dict[str, Any] = {"path": [str(self.clips[i].path) for i in ids]}
        if (self.speakers[: self.num_source_clips] != "").any():
            out["speaker"] = self.speakers[ids].tolist()
        return out

    def _index(self, source: Path) -> tuple[Sequence[Clip], np.ndarray]:
        """The clips of ``source`` and their lengths in 16 kHz samples, read from the headers once and cached on
        disk (:func:`ssl_domains.indexcache.cached_index`): a second run on the same files opens none of them."""
        cfg = self.cfg
        key = {"index": "audio-clips", "version": INDEX_VERSION, "label_regex": cfg.label_regex,
               "layout": cfg.layout, "min_seconds": cfg.min_seconds}  # fmt: skip

        def lengths(clips: list[Clip]) -> np.ndarray:
            return np.array([probe(c.path, features.SAMPLE_RATE, cfg.min_seconds) for c in clips], dtype=np.int64)

        def build() -> tuple[PackedList[Clip], np.ndarray]:
            clips = find_clips(source, cfg.label_regex, cfg.layout)
            return PackedList(clips), lengths(clips)  # packed: the warm setup loads two arrays, not 281k objects

        if source.is_dir() and not (source / "wav.scp").is_file():  # a folder: its walk is the signature
            return cached_index(source, key, build, enabled=cfg.index_cache)
        clips = find_clips(source, cfg.label_regex, cfg.layout)  # a manifest: re-read, keyed by the files it lists
        key["manifest"] = True
        samples = cached_index(
            source, key, lambda: lengths(clips), enabled=cfg.index_cache, files=[c.path for c in clips]
        )
        return clips, samples

    def _choose_cache(self) -> bool:
        """Keep the features in memory? ``memory``/``none`` say so; ``auto`` keeps them when they fit the budget."""
        if self.cfg.cache != "auto":
            return self.cfg.cache == "memory"
        nbytes = int(self.lengths.sum()) * int(self.cfg.num_mel_bins) * 4  # float32 [T, F] per clip
        return fits_in_memory(nbytes, f"{self.data}: the features of {len(self.clips)} clips")

    def _normalisation(self) -> list[Any]:
        if getattr(self.cfg, "norm_mean", None) is not None and getattr(self.cfg, "norm_std", None) is not None:
            return [float(self.cfg.norm_mean), float(self.cfg.norm_std)]
        # clips spread evenly over the sorted list: a corpus sorted by speaker (LibriSpeech) gives every speaker a
        # share, not its first few speakers all of it
        count = min(len(self.train_indices), self.cfg.stats_max_clips)
        sample = self.train_indices[np.linspace(0, len(self.train_indices) - 1, count).round().astype(int)]
        per_band = self.kind == "logmel_global"
        key = {"index": "audio-statistics", "version": INDEX_VERSION, "kind": self.kind, "per_band": per_band,
               "mel_bins": int(self.cfg.num_mel_bins), "f_max": self.cfg.f_max,
               "min_seconds": self.cfg.min_seconds}  # fmt: skip

        def compute() -> list[Any]:  # decodes up to stats_max_clips clips: kept on disk, keyed by exactly those files
            return list(dataset_statistics((self._raw(int(i)) for i in sample), per_band=per_band))

        files = [self.clips[int(i)].path for i in sample]
        return cached_index(self.data, key, compute, enabled=self.cfg.index_cache, files=files)

    def _raw(self, index: int) -> torch.Tensor:
        """Un-normalised features of clip ``index``, kept in memory after the first read when ``in_memory``."""
        feats = self._cache.get(index)
        if feats is None:
            feats = clip_features(
                self.clips[index], self.kind, self.cfg.num_mel_bins, self.cfg.min_seconds, self.cfg.f_max
            )
            if self.in_memory:
                self._cache[index] = feats
        return feats

    def crop_window(self, index: int, warp: float | None) -> tuple[int, torch.Tensor, int, float]:
        """A training crop of clip ``index`` as the samples its frames read (:func:`features.waveform_window`):
        the features follow on the training device, batched (:meth:`on_after_batch_transfer`)."""
        clip = self.clips[index]
        samples = read_audio(clip.path, features.SAMPLE_RATE, self.cfg.min_seconds)
        total = features.num_frames(len(samples), self.kind)
        if total <= 0:
            raise DataError(f"{clip.path}: too short for one 25 ms frame; remove the clip")
        frames = min(total, self.cfg.crop_frames)
        window = features.waveform_window(samples, self.kind, _crop_start(total, frames), frames)
        return index, torch.from_numpy(window), frames, 1.0 if warp is None else warp

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches of waveform crops become the features :meth:`features_of` gives, computed for the whole
        batch on its device (Lightning calls this after moving the batch); other batches pass through."""
        if not isinstance(batch, dict) or "waveform" not in batch:
            return batch
        batch = dict(batch)
        wave, warp, length = batch.pop("waveform"), batch.pop("warp"), batch["length"]
        feats = features.batch_features(wave, self.kind, int(self.cfg.num_mel_bins), self.cfg.f_max)
        longest = -(-feats.shape[1] // self.pad_multiple) * self.pad_multiple  # the windows fit the longest crop
        feats = torch.nn.functional.pad(feats, (0, 0, 0, max(longest - feats.shape[1], 0)))
        valid = (torch.arange(feats.shape[1], device=feats.device) < length[:, None]).unsqueeze(-1)
        band_range = features.band_range(self.kind, self.cfg.f_max)
        if self.kind == "logmel":  # CMVN over the crop's frames, then the warp: the order of features_of
            feats = features.masked_cmvn(feats, length)
            if self.cfg.vtlp > 0:
                feats = features.warp_frequency(feats, warp, *band_range)
        else:
            if self.cfg.vtlp > 0:
                feats = features.warp_frequency(feats, warp, *band_range)
            mean, std = (torch.as_tensor(v, dtype=feats.dtype, device=feats.device) for v in self.fitted.get("norm"))
            feats = (feats - mean) / (self.std_factor * std)
        batch["features"] = feats * valid
        return batch

    # ---- batches ---------------------------------------------------------------------------------------------
    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """Zero-pad the clips to the longest one, rounded up to ``pad_multiple``; crops for the device
        (:meth:`crop_window`) are zero-padded waveforms with their frame counts and warp factors."""
        if len(items[0]) == 4:
            ids = torch.tensor([i for i, *_ in items], dtype=torch.long)
            return {
                "waveform": torch.nn.utils.rnn.pad_sequence([w for _, w, _, _ in items], batch_first=True),
                "length": torch.tensor([n for _, _, n, _ in items], dtype=torch.long),
                "warp": torch.tensor([a for *_, a in items], dtype=torch.float32),
                "id": ids, "label": self.label[ids], "split": self.split[ids],
            }  # fmt: skip
        lengths = torch.tensor([f.shape[0] for _, f in items], dtype=torch.long)
        longest = int(lengths.max())
        longest = -(-longest // self.pad_multiple) * self.pad_multiple
        batch = torch.zeros(len(items), longest, items[0][1].shape[1])
        for row, (_, feats) in enumerate(items):
            batch[row, : feats.shape[0]] = feats
        ids = torch.tensor([i for i, _ in items], dtype=torch.long)
        return {"features": batch, "length": lengths, "id": ids, "label": self.label[ids], "split": self.split[ids]}

    def train_dataloader(self) -> DataLoader:
        crop = np.minimum(self.lengths[self.train_indices], self.cfg.crop_frames)
        sampler = None
        if self.cfg.max_seconds is not None:  # padded frames per batch: rows x the longest crop (10 ms frames)
            max_frames = int(self.cfg.max_seconds * features.SAMPLE_RATE / features.HOP)  # >= crop_frames: validate()
            sampler = DurationBatchSampler(crop, max_frames, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        return train_loader(
            _Items(self, self.train_indices, train=True),
            batch_size=self.cfg.batch_size,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            drop_last="auto",
            lengths=crop.tolist(),
            sampler=sampler,
        )

    def predict_dataloader(self) -> DataLoader:
        indices = np.arange(self.num_source_clips)
        order = indices[np.argsort(self.lengths[indices], kind="stable")]  # similar lengths together: less padding
        return eval_loader(
            _Items(self, order, train=False), batch_size=self.cfg.batch_size, collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
        )  # fmt: skip


def _natural(name: str) -> tuple[int, int | str]:
    """Sort key: numeric class names by value ("2" < "10"), then the rest alphabetically."""
    return (0, int(name)) if name.isdigit() else (1, name)
