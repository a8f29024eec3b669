"""Finding and decoding audio clips: a folder (recursive), one file, a manifest CSV or a Kaldi ``wav.scp``.

``torchaudio.load`` needs torchcodec and FFmpeg since torchaudio 2.9, so clips are decoded with ``soundfile``
(libsndfile 1.1+: WAV, FLAC, OGG/Vorbis, Opus, MP3), downmixed to mono and resampled with
``torchaudio.functional.resample``. Every unusable clip raises one :class:`DataError` naming the file and the fix.

Speakers and labels come from the file names (``label_regex``: either group may be left out), from a manifest's
columns, from Kaldi's ``utt2spk``, or from the folder layout: LibriSpeech's ``<speaker>/<chapter>/
<speaker>-<chapter>-<utterance>.flac`` is recognised by itself, and ``layout: speaker_chapter`` takes the
speaker from the folder two levels up for any corpus laid out that way (Libri-Light's ``<speaker>/<book>/``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_domains import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")
# formats people have in audio folders that libsndfile cannot read: named in the error instead of being skipped
UNSUPPORTED_SUFFIXES = (".m4a", ".aac", ".wma", ".webm", ".mp4")
LAYOUTS = ("auto", "names", "speaker_chapter")


@dataclass(frozen=True)
class Clip:
    """One audio file and what its name (or the manifest) says about it."""

    path: Path
    label: str | None
    speaker: str | None


def _unsupported(path: Path) -> DataError:
    return DataError(
        f"{path}: {path.suffix or 'this file type'} is not supported (WAV, FLAC, OGG, Opus and MP3 are, via "
        f'soundfile); convert it, e.g. `ffmpeg -i "{path.name}" -ar 16000 "{path.stem}.flac"`'
    )


def parse_name(name: str, pattern: re.Pattern[str]) -> tuple[str | None, str | None]:
    """``(label, speaker)`` from a file name with the ``label_regex`` groups; ``(None, None)`` if it does not match."""
    match = pattern.fullmatch(name)
    if match is None:
        return None, None
    groups = match.groupdict()
    return groups.get("label"), groups.get("speaker")


def compile_label_regex(label_regex: str) -> re.Pattern[str]:
    """The compiled ``label_regex``; it must define the named group ``label``, ``speaker``, or both."""
    try:
        pattern = re.compile(label_regex)
    except re.error as exc:
        raise DataError(f"label_regex {label_regex!r} is not a valid Python regex: {exc}") from exc
    if not {"label", "speaker"} & set(pattern.groupindex):
        raise DataError(
            f"label_regex {label_regex!r} has neither of the named groups label and speaker; write one or both as "
            r"(?P<label>...) and (?P<speaker>...), e.g. (?P<label>\d+)_(?P<speaker>[^_]+)_\d+\.wav, or "
            r"(?P<speaker>\d+)-\d+-\d+\.flac for speakers alone"
        )
    return pattern


def layout_speaker(path: Path, layout: str) -> str | None:
    """The speaker the folder layout gives ``path``: LibriSpeech's (``auto``) or any ``speaker/chapter/`` tree."""
    if layout == "speaker_chapter":
        return path.parent.parent.name or None
    if layout == "auto":  # <speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac, and nothing looser
        parts = path.stem.split("-")
        if len(parts) == 3 and parts[0] == path.parent.parent.name and parts[1] == path.parent.name:
            return parts[0]
    return None


def _clip(path: Path, pattern: re.Pattern[str], layout: str, label: str | None = None,
          speaker: str | None = None) -> Clip:  # fmt: skip
    name_label, name_speaker = parse_name(path.name, pattern)
    return Clip(path, label or name_label, speaker or name_speaker or layout_speaker(path, layout))


def _read_manifest(path: Path, pattern: re.Pattern[str], layout: str) -> list[Clip]:
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
        clips.append(_clip(clip_path, pattern, layout, row.get("label"), row.get("speaker")))
    return clips


def _kaldi_table(path: Path) -> list[tuple[int, str, str]]:
    """``(line, key, rest)`` of a Kaldi text table (``wav.scp``, ``utt2spk``); blank lines are allowed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); re-save it as UTF-8") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        fields = line.strip().split(maxsplit=1)
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"{path}, line {number}: {line.strip()!r} has a key but no value; write 'KEY VALUE'")
        rows.append((number, fields[0], fields[1].strip()))
    return rows


def _read_wav_scp(path: Path, pattern: re.Pattern[str], layout: str) -> list[Clip]:
    """A Kaldi data folder's ``wav.scp`` (``utt-id path``), with speakers from ``utt2spk`` beside it when present.

    Relative paths are taken from the current folder, as Kaldi's recipes do, else from the file's folder. Piped
    commands (``sox ... |``) and archive offsets (``foo.ark:123``) are not files: each is an error with the fix.
    """
    speakers = {}
    if (path.parent / "utt2spk").is_file():
        speakers = {key: value for _, key, value in _kaldi_table(path.parent / "utt2spk")}
    clips = []
    for line, utt, value in _kaldi_table(path):
        if value.endswith("|") or re.search(r"\.ark:\d+$", value):
            raise DataError(
                f"{path}, line {line}: {utt} is read through {'a command' if value.endswith('|') else 'an archive'}"
                f" ({value!r}); write the audio to files first (e.g. `wav-copy scp:{path.name} ark,scp:out.ark,"
                "out.scp` then `sox`, or `ffmpeg` per line) and list those paths"
            )
        clip_path = Path(value)
        if not clip_path.is_absolute() and not clip_path.is_file():
            clip_path = path.parent / clip_path
        if clip_path.suffix.lower() not in AUDIO_SUFFIXES:
            raise _unsupported(clip_path)
        if not clip_path.is_file():
            raise DataError(f"{path}, line {line}: the listed file {value} does not exist; fix the path or remove it")
        clips.append(_clip(clip_path, pattern, layout, speaker=speakers.get(utt)))
    if not clips:
        raise DataError(f"{path} lists no clips; write one 'utterance-id path' line per clip")
    return clips


def find_clips(path: Path, label_regex: str, layout: str = "auto") -> list[Clip]:
    """The clips of ``path``: a folder, searched recursively; one audio file; a ``.csv`` manifest; a Kaldi
    ``wav.scp``, or a Kaldi data folder holding one. Folders are listed sorted; manifests keep their order."""
    pattern = compile_label_regex(label_regex)
    if layout not in LAYOUTS:
        raise DataError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a folder of audio files, a manifest CSV or a Kaldi wav.scp")
    if path.is_dir() and (path / "wav.scp").is_file():
        path = path / "wav.scp"
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _read_manifest(path, pattern, layout)
        if path.suffix.lower() == ".scp":
            return _read_wav_scp(path, pattern, layout)
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            raise _unsupported(path)
        return [_clip(path, pattern, layout)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        other = sorted(p for p in path.rglob("*") if p.suffix.lower() in UNSUPPORTED_SUFFIXES)
        if other:
            raise _unsupported(other[0])
        raise DataError(f"{path} holds no WAV, FLAC, OGG, Opus or MP3 files (searched recursively)")
    return [_clip(p, pattern, layout) for p in files]


def probe(path: Path, sample_rate: int, min_seconds: float) -> int:
    """The number of samples ``path`` holds at ``sample_rate``, from its header alone; too short is an error."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:  # the header alone is unreadable
        raise DataError(
            f"{path}: cannot be read ({exc}); the file is corrupt or not WAV/FLAC/OGG/MP3: re-export or remove it"
        ) from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise DataError(f"{path}: holds no audio samples; remove it from the data")
    if info.frames / info.samplerate < min_seconds:
        raise DataError(
            f"{path}: {info.frames / info.samplerate:.3f} s is shorter than the minimum of {min_seconds} s; remove "
            "the clip or lower min_seconds"
        )
    return int(info.frames * sample_rate / info.samplerate)


def read_audio(path: Path, sample_rate: int, min_seconds: float) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``, checked: decodable, non-empty, finite, long enough."""
    import soundfile
    import torch
    import torchaudio.functional as AF

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:  # LibsndfileError is a RuntimeError on older releases
        raise DataError(
            f"{path}: cannot be decoded ({exc}); the file is corrupt or not WAV/FLAC/OGG/MP3: re-export or remove it"
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
