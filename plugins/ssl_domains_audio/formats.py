"""Finding and decoding audio clips: a folder (recursive), one file, or a manifest CSV; decoded with soundfile.

``torchaudio.load`` needs torchcodec and FFmpeg since torchaudio 2.9, so clips are decoded with ``soundfile``
(libsndfile: WAV, FLAC, OGG/Vorbis, OGG/Opus), downmixed to mono and resampled with
``torchaudio.functional.resample``. Every unusable clip raises one :class:`DataError` naming the file and the fix.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_domains import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# formats people have in audio folders that libsndfile cannot read: named in the error instead of being skipped
UNSUPPORTED_SUFFIXES = (".mp3", ".m4a", ".aac", ".wma", ".opus", ".webm", ".mp4")


@dataclass(frozen=True)
class Clip:
    """One audio file and what its name (or the manifest) says about it."""

    path: Path
    label: str | None
    speaker: str | None


def _unsupported(path: Path) -> DataError:
    return DataError(
        f"{path}: {path.suffix or 'this file type'} is not supported (WAV, FLAC and OGG are, via soundfile); "
        f'convert it, e.g. `ffmpeg -i "{path.name}" -ar 16000 "{path.stem}.flac"`'
    )


def parse_name(name: str, pattern: re.Pattern[str]) -> tuple[str | None, str | None]:
    """``(label, speaker)`` from a file name with the ``label_regex`` groups; ``(None, None)`` if it does not match."""
    match = pattern.fullmatch(name)
    if match is None:
        return None, None
    groups = match.groupdict()
    return groups.get("label"), groups.get("speaker")


def compile_label_regex(label_regex: str) -> re.Pattern[str]:
    """The compiled ``label_regex``; it must define the named groups ``label`` and ``speaker``."""
    try:
        pattern = re.compile(label_regex)
    except re.error as exc:
        raise DataError(f"label_regex {label_regex!r} is not a valid Python regex: {exc}") from exc
    missing = {"label", "speaker"} - set(pattern.groupindex)
    if missing:
        raise DataError(
            f"label_regex {label_regex!r} lacks the named group(s) {sorted(missing)}; "
            r"write them as (?P<label>...) and (?P<speaker>...), e.g. (?P<label>\d+)_(?P<speaker>[^_]+)_\d+\.wav"
        )
    return pattern


def _read_manifest(path: Path, pattern: re.Pattern[str]) -> list[Clip]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [(reader.line_num, row) for row in reader]  # line numbers as an editor shows them
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV manifest ({exc}); re-save it as UTF-8 CSV") from exc
    if not rows or "path" not in rows[0][1]:
        raise DataError(f"{path}: a manifest needs a header row with a 'path' column (optional: label, speaker)")
    clips = []
    for line, row in rows:
        if not row.get("path"):
            raise DataError(f"{path}, line {line}: no 'path' value; give every row a clip path or remove it")
        clip_path = Path(row["path"])
        if not clip_path.is_absolute():
            clip_path = path.parent / clip_path
        if clip_path.suffix.lower() not in AUDIO_SUFFIXES:
            raise _unsupported(clip_path)
        if not clip_path.is_file():
            raise DataError(f"{path}: the listed file {clip_path} does not exist; fix the path or remove the row")
        label, speaker = parse_name(clip_path.name, pattern)
        clips.append(Clip(clip_path, row.get("label") or label, row.get("speaker") or speaker))
    return clips


def find_clips(path: Path, label_regex: str) -> list[Clip]:
    """The clips under ``path`` (a folder, searched recursively; one audio file; or a ``.csv`` manifest), sorted."""
    pattern = compile_label_regex(label_regex)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a folder of WAV/FLAC/OGG files or a manifest CSV")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _read_manifest(path, pattern)
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            raise _unsupported(path)
        return [Clip(path, *parse_name(path.name, pattern))]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        other = sorted(p for p in path.rglob("*") if p.suffix.lower() in UNSUPPORTED_SUFFIXES)
        if other:
            raise _unsupported(other[0])
        raise DataError(f"{path} holds no WAV, FLAC or OGG files (searched recursively)")
    return [Clip(p, *parse_name(p.name, pattern)) for p in files]


def read_audio(path: Path, sample_rate: int, min_seconds: float) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``, checked: decodable, non-empty, finite, long enough."""
    import soundfile
    import torch
    import torchaudio.functional as AF

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:  # LibsndfileError is a RuntimeError on older releases
        raise DataError(
            f"{path}: cannot be decoded ({exc}); the file is corrupt or not WAV/FLAC/OGG: re-export or remove it"
        ) from exc
    if samples.size == 0:
        raise DataError(f"{path}: holds no audio samples; remove it from the data")
    if not np.isfinite(samples).all():
        raise DataError(f"{path}: contains NaN or infinite samples; re-export the file or remove it")
    mono = samples.mean(axis=1)
    if len(mono) / rate < min_seconds:
        raise DataError(
            f"{path}: {len(mono) / rate:.3f} s is shorter than the minimum of {min_seconds} s; remove the clip or "
            "lower min_seconds"
        )
    if rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
    return mono
