"""Unlabelled speech synthesised with espeak-ng, to widen a small corpus's range of voices for pretraining.

    ssl-domains run tera synthesize --out DIR [--clips 1500] [--words zero,one,...] [--seed 0]

espeak-ng (a formant synthesiser) comes as a shared library with its voice data in the ``espeakng-loader`` wheel
(part of the ``audio`` extra), called through ``ctypes``: no system package, no network. Each clip is one word
spoken by a random English accent and voice variant (espeak-ng's ``!v`` variants: male, female, croaky, whispery,
Klatt...), at a random pitch, pitch range and speaking rate; it is written as 16 kHz mono FLAC named
``espeak_<n>_<voice>.flac``, a name no ``label_regex`` of the form ``label_speaker_n`` matches, so the clips
carry no label and no speaker: they reach pretraining only, never a probe.

Issue 5 names this source: FSDD has 4 training speakers per fold, and the pretrained encoder helps speakers it
has heard far more than speakers it has not (``docs/plugins/tera.md``).
"""

from __future__ import annotations

import argparse
import ctypes
import re
from pathlib import Path

import numpy as np

from ssl_domains import UserError

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
_SYNCHRONOUS, _POS_CHARACTER = 2, 1  # espeak_AUDIO_OUTPUT and espeak_POSITION_TYPE values (speak_lib.h)
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER values
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """The espeak-ng library of ``espeakng-loader``, synthesising into memory (one instance per process)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise UserError(
                'speech synthesis needs espeakng-loader: pip install "ssl-domains[audio]" (or espeakng-loader)'
            ) from exc
        self.data = Path(espeakng_loader.get_data_path())
        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        self.sample_rate = int(self.lib.espeak_Initialize(_SYNCHRONOUS, 0, str(self.data).encode(), 0))
        if self.sample_rate <= 0:
            raise UserError(f"espeak-ng failed to start with its data at {self.data}; reinstall espeakng-loader")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept on self: the library holds only a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes.Array, count: int, events: int) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def variants(self) -> list[str]:
        """espeak-ng's voice variants (``espeak-ng-data/voices/!v``), sorted."""
        return sorted(p.name for p in (self.data / "voices" / "!v").iterdir() if p.is_file())

    def say(self, text: str, voice: str, pitch: int, pitch_range: int, rate: int) -> np.ndarray:
        """``text`` spoken by ``voice`` (e.g. ``en-us+f3``) as float32 samples at :attr:`sample_rate`."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise UserError(f"espeak-ng has no voice {voice!r}")
        for parameter, value in ((_PITCH, pitch), (_RANGE, pitch_range), (_RATE, rate)):
            self.lib.espeak_SetParameter(parameter, value, 0)
        self._chunks.clear()
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return samples.astype(np.float32) / 32768.0


def synthesize(out: Path, clips: int, words: tuple[str, ...] = DIGITS, seed: int = 0) -> list[Path]:
    """Write ``clips`` single-word clips of random voices under ``out`` (16 kHz FLAC); return their paths.

    Files are written under a temporary name and renamed when complete, so an interrupted run leaves no
    half-written clip.
    """
    import soundfile
    import torch
    import torchaudio.functional as AF

    engine, rng = Espeak(), np.random.default_rng(seed)
    variants = engine.variants()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n in range(clips):
        voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{variants[rng.integers(len(variants))]}"
        samples = engine.say(
            str(words[rng.integers(len(words))]), voice, pitch=int(rng.integers(20, 81)),
            pitch_range=int(rng.integers(20, 81)), rate=int(rng.integers(130, 211)),
        )  # fmt: skip
        if samples.size == 0:
            raise UserError(f"espeak-ng returned no audio for voice {voice!r}")
        wave = AF.resample(torch.from_numpy(samples), engine.sample_rate, 16_000).numpy()
        path = out / f"espeak_{n:05d}_{re.sub(r'[^A-Za-z0-9]+', '-', voice)}.flac"
        partial = path.with_suffix(".partial")
        soundfile.write(str(partial), wave, 16_000, format="FLAC", subtype="PCM_16")
        partial.rename(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """``ssl-domains run tera|ssast synthesize``: write unlabelled espeak-ng speech for pretraining."""
    parser = argparse.ArgumentParser(prog="synthesize", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the clips into (created)")
    parser.add_argument("--clips", type=int, default=1500)
    parser.add_argument("--words", default=",".join(DIGITS), help="comma-separated words, one per clip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = synthesize(args.out, args.clips, tuple(w for w in args.words.split(",") if w), args.seed)
    print(f"wrote {len(paths)} clips to {args.out}")
