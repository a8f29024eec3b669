"""A tiny generated speech-like corpus for tests and the conformance kit (no network, a few KB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_clip(label: int, speaker: int, seed: int, rate: int = 8000) -> np.ndarray:
    """A voiced, vowel-like clip: harmonics of the speaker's pitch shaped by the label's two formants."""
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(0.3, 0.6)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 100.0 + 40.0 * speaker + rng.normal(0, 3)
    formants = (300.0 + 120.0 * label, 900.0 + 250.0 * label)
    wave = np.zeros_like(t)
    for harmonic in range(1, int(3500 / pitch)):
        freq = harmonic * pitch
        gain = sum(np.exp(-(((freq - f) / 120.0) ** 2)) for f in formants) + 0.02
        wave += gain * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.03)
    wave = envelope * wave + 0.01 * rng.normal(size=t.shape)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def write_example_clips(root: Path, labels: int = 3, speakers: int = 3, per_pair: int = 3) -> Path:
    """Write ``{label}_{speaker}_{n}.wav`` clips (8 kHz, FSDD's naming) under ``root/clips`` and return it."""
    import soundfile

    out = Path(root) / "clips"
    out.mkdir(parents=True, exist_ok=True)
    names = ["ann", "bob", "cyd", "dee", "eve", "fay"]
    for label in range(labels):
        for speaker in range(speakers):
            for n in range(per_pair):
                clip = synthetic_clip(label, speaker, seed=100 * label + 10 * speaker + n)
                soundfile.write(str(out / f"{label}_{names[speaker]}_{n}.wav"), clip, 8000, subtype="PCM_16")
    return out
