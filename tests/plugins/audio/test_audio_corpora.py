"""Corpora the size of the papers': LibriSpeech and Kaldi layouts, MP3/Opus, the cache against a memory budget,
the on-disk index of clip lengths, and training batches capped by duration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from ssl_domains import ConfigError, DataError
from ssl_domains.config import from_mapping
from ssl_domains.memory import BUDGET_ENV
from ssl_domains_audio import features, formats
from ssl_domains_audio.data import AudioDataModule
from ssl_domains_audio.formats import find_clips, read_audio
from ssl_domains_audio.plugin import FSDD_NAMES, SSASTConfig, TERAConfig
from ssl_domains_audio.synthetic import synthetic_clip, write_example_clips


def _module(path: Path, **overrides) -> AudioDataModule:
    cfg = from_mapping(TERAConfig, {"batch_size": 4, **overrides}, "tera")
    dm = AudioDataModule(path, cfg, kind="logmel")
    dm.setup("fit")
    return dm


def _librispeech(root: Path) -> Path:
    """LibriSpeech's layout: <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac beside a .trans.txt."""
    for s, speaker in enumerate(("19", "26", "103")):
        chapter = root / speaker / "198"
        chapter.mkdir(parents=True)
        for utt in range(3):
            name = f"{speaker}-198-{utt:04d}"
            soundfile.write(str(chapter / f"{name}.flac"), synthetic_clip(utt, s, 10 * s + utt, 16000), 16000)
        (chapter / f"{speaker}-198.trans.txt").write_text("".join(f"{speaker}-198-{u:04d} HELLO\n" for u in range(3)))
    return root


def test_librispeech_folders_give_speakers_without_a_regex(tmp_path: Path):
    root = _librispeech(tmp_path / "train-clean-100")
    clips = find_clips(root, FSDD_NAMES)  # the default regex matches nothing here: the layout gives the speakers
    assert len(clips) == 9 and {c.speaker for c in clips} == {"19", "26", "103"}
    assert {c.label for c in clips} == {None}
    dm = _module(root, test_speakers=["103"])
    assert sorted(set(dm.speakers[dm.train_indices])) == ["19", "26"] and dm.num_classes == 0
    assert {c.speaker for c in find_clips(root, FSDD_NAMES, layout="names")} == {None}


def test_speaker_chapter_layout_and_a_speaker_only_regex(tmp_path: Path):
    book = tmp_path / "librilight" / "5678" / "bookA"
    book.mkdir(parents=True)
    soundfile.write(str(book / "chapter_01_reader_64kb.flac"), synthetic_clip(1, 1, 1, 16000), 16000)
    assert find_clips(tmp_path / "librilight", FSDD_NAMES)[0].speaker is None  # not LibriSpeech's names
    assert find_clips(tmp_path / "librilight", FSDD_NAMES, layout="speaker_chapter")[0].speaker == "5678"
    root = write_example_clips(tmp_path)
    clips = find_clips(root, r"\d+_(?P<speaker>[a-z]+)_\d+\.wav")
    assert {c.speaker for c in clips} == {"ann", "bob", "cyd"} and {c.label for c in clips} == {None}


def test_kaldi_wav_scp_with_utt2spk(tmp_path: Path):
    root = write_example_clips(tmp_path)
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    wavs = sorted(root.glob("*.wav"))[:4]
    (data / "wav.scp").write_text("".join(f"utt{i} {p}\n" for i, p in enumerate(wavs)) + "\n")
    (data / "utt2spk").write_text("utt0 spkA\nutt1 spkA\nutt2 spkB\nutt3 spkB\n")
    for path in (data, data / "wav.scp"):  # the data folder or the file itself
        clips = find_clips(path, FSDD_NAMES)
        assert [c.path for c in clips] == wavs
        assert [c.speaker for c in clips] == ["spkA", "spkA", "spkB", "spkB"]  # utt2spk wins over the names
        assert clips[0].label == wavs[0].name.split("_")[0]
    (data / "wav.scp").write_text("utt0 sox in.wav -t wav - |\n")
    with pytest.raises(DataError, match=r"wav\.scp, line 1: utt0 is read through a command.*write the audio"):
        find_clips(data, FSDD_NAMES)
    (data / "wav.scp").write_text("utt0 feats.ark:1234\n")
    with pytest.raises(DataError, match=r"line 1: utt0 is read through an archive"):
        find_clips(data, FSDD_NAMES)
    (data / "wav.scp").write_text("utt0 /nowhere/a.wav\n")
    with pytest.raises(DataError, match=r"line 1: the listed file /nowhere/a\.wav does not exist"):
        find_clips(data, FSDD_NAMES)


@pytest.mark.parametrize(("suffix", "fmt", "subtype"), [(".mp3", "MP3", "MPEG_LAYER_III"), (".opus", "OGG", "OPUS")])
def test_mp3_and_opus_decode_through_soundfile(tmp_path: Path, suffix: str, fmt: str, subtype: str):
    clip = synthetic_clip(2, 1, 0, 16000)
    path = tmp_path / f"2_bob_0{suffix}"
    soundfile.write(str(path), clip, 16000, format=fmt, subtype=subtype)
    assert find_clips(tmp_path, FSDD_NAMES)[0].path == path
    decoded = read_audio(path, 16000, 0.1)
    assert abs(len(decoded) - len(clip)) < 0.05 * 16000  # codec padding: tens of ms at most
    n = min(len(decoded), len(clip))
    lag = int(np.argmax(np.correlate(decoded[:n], clip[:n], "full"))) - (n - 1)  # the codec's delay
    a, b = (decoded[lag:n], clip[: n - lag]) if lag >= 0 else (decoded[: n + lag], clip[-lag:n])
    assert np.corrcoef(a, b)[0, 1] > 0.9  # lossy, but the same sound


def test_cache_auto_keeps_features_only_within_the_memory_budget(tmp_path: Path, monkeypatch):
    root = write_example_clips(tmp_path)
    roomy = _module(root)
    assert roomy.in_memory and len(roomy._cache) == 27
    monkeypatch.setenv(BUDGET_ENV, "1000")  # 1 kB: the 27 clips' log-mel (~1 MB) do not fit
    lazy = _module(root)
    assert not lazy.in_memory and not lazy._cache
    torch.testing.assert_close(lazy.features_of(5), roomy.features_of(5))  # decoded on demand, the same values
    assert not lazy._cache  # and not kept
    batch = next(iter(lazy.predict_dataloader()))
    reference = next(iter(roomy.predict_dataloader()))
    torch.testing.assert_close(batch["features"], reference["features"])
    assert _module(root, cache="memory").in_memory  # explicit settings ignore the budget
    monkeypatch.delenv(BUDGET_ENV)
    assert not _module(root, cache="none").in_memory


def test_a_short_clip_is_an_error_at_setup_even_when_nothing_is_decoded(tmp_path: Path):
    root = write_example_clips(tmp_path)
    soundfile.write(str(root / "3_ann_9.wav"), np.ones(200, np.float32) * 0.1, 8000)  # 25 ms
    with pytest.raises(DataError, match=r"3_ann_9\.wav: 0\.025 s is shorter than the minimum of 0\.1 s"):
        _module(root, cache="none", index_cache=False)


def test_clip_lengths_are_read_once_and_reread_when_a_file_changes(tmp_path: Path, monkeypatch):
    root = write_example_clips(tmp_path)
    first = _module(root, cache="none")
    calls = []
    real = formats.probe
    monkeypatch.setattr("ssl_domains_audio.data.probe", lambda *a: calls.append(a[0]) or real(*a))
    second = _module(root, cache="none")
    assert calls == [] and np.array_equal(second.lengths, first.lengths)  # from the cache: no header read
    soundfile.write(str(root / "0_ann_0.wav"), synthetic_clip(0, 0, 99, 8000)[:3000], 8000)
    third = _module(root, cache="none")
    assert len(calls) == 27 and third.lengths[0] != first.lengths[0]  # a changed file rebuilds the index
    calls.clear()
    _module(root, cache="none", index_cache=False)
    assert len(calls) == 27
    manifest = tmp_path / "list.csv"  # a manifest is keyed by the files it lists
    manifest.write_text("path\n" + "".join(f"clips/{p.name}\n" for p in sorted(root.glob("*.wav"))[:5]))
    calls.clear()
    _module(manifest, cache="none")
    _module(manifest, cache="none")
    assert len(calls) == 5


def test_max_seconds_batches_are_capped_by_padded_duration(tmp_path: Path):
    root = _librispeech(tmp_path / "ls")
    dm = _module(root, max_seconds=1.5, crop_frames=60)  # 150 frames a batch: two 60-frame crops, or more shorter
    loader = dm.train_dataloader()
    batches = list(loader)
    assert sum(len(b["id"]) for b in batches) == 9
    for batch in batches:
        assert batch["features"].shape[0] * batch["features"].shape[1] <= 150
    with pytest.raises(ConfigError, match=r"tera\.max_seconds 0\.3 holds 30 frames, fewer than one crop of crop_"):
        from_mapping(TERAConfig, {"max_seconds": 0.3, "crop_frames": 60}, "tera").validate()


def test_batched_features_equal_each_clips_features_frame_for_frame():
    samples = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    for kind, bins in (("logmel_global", 80), ("fbank", 128)):
        whole = features.compute(samples, kind, bins, 7000.0)
        starts, frames = [0, 17, whole.shape[0] - 60], [90, 40, 60]  # rows of different lengths, one at the end
        windows = [features.waveform_window(samples, kind, s, n) for s, n in zip(starts, frames, strict=True)]
        padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in windows], batch_first=True)
        batch = features.batch_features(padded, kind, bins, 7000.0)
        assert batch.shape == (3, 90, bins)
        for row, (start, n) in enumerate(zip(starts, frames, strict=True)):
            torch.testing.assert_close(batch[row, :n], whole[start : start + n], atol=1e-5, rtol=1e-5)
    raw = features.compute(samples, "logmel_global", 80)
    padded = torch.cat([raw, torch.full((7, 80), 3.0)])[None]  # CMVN reads the valid frames only
    torch.testing.assert_close(features.masked_cmvn(padded, torch.tensor([len(raw)]))[0, : len(raw)],
                               features.log_mel(samples), atol=1e-4, rtol=0)  # fmt: skip
    alphas = torch.tensor([0.9, 1.0, 1.12])
    warped = features.warp_frequency(batch, alphas, 20.0, 7000.0)
    for row, alpha in enumerate(alphas.tolist()):
        assert torch.equal(warped[row], features.warp_frequency(batch[row], alpha, 20.0, 7000.0))


@pytest.mark.parametrize(("kind", "crop", "vtlp"), [("logmel", 10_000, 0.0), ("logmel_global", 30, 0.1),
                                                    ("fbank", 30, 0.1)])  # fmt: skip
def test_features_on_the_device_equal_the_workers_features(tmp_path: Path, kind: str, crop: int, vtlp: float):
    root = write_example_clips(tmp_path)
    config = SSASTConfig if kind == "fbank" else TERAConfig

    def module(**overrides) -> AudioDataModule:
        cfg = from_mapping(config, {"batch_size": 4, "crop_frames": crop, "vtlp": vtlp, **overrides}, "x")
        dm = AudioDataModule(root, cfg, kind=kind, pad_multiple=2 if kind == "fbank" else 1)
        dm.setup("fit")
        return dm

    workers, device = module(feature_extraction="loader"), module(feature_extraction="device")
    assert workers.in_memory and not workers.features_on_device
    assert device.features_on_device and not device.in_memory and not device._cache
    torch.manual_seed(5)
    expected = next(iter(workers.train_dataloader()))
    torch.manual_seed(5)  # the same crops and warp factors
    crops = next(iter(device.train_dataloader()))
    assert crops["waveform"].dtype == torch.float32 and "features" not in crops
    got = device.on_after_batch_transfer(crops, 0)
    assert sorted(got) == sorted(expected) and torch.equal(got["length"], expected["length"])
    # float32 FFTs batched differently round differently; it shows only where the power is near log's 1e-10 floor
    torch.testing.assert_close(got["features"], expected["features"], atol=1e-2, rtol=0)
    assert float((got["features"] - expected["features"]).abs().mean()) < 1e-4
    assert device.on_after_batch_transfer(expected, 0) is expected  # batches of features pass through
    assert _auto_choice(root, "none") and not _auto_choice(root, "memory")  # auto: on the device unless cached


def _auto_choice(root: Path, cache: str) -> bool:
    return _module(root, cache=cache).features_on_device


def test_long_crops_are_normalised_over_their_own_frames_and_memory_caching_conflicts(tmp_path: Path):
    root = write_example_clips(tmp_path)
    dm = _module(root, cache="none", crop_frames=20)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert (batch["length"] == 20).all()
    torch.testing.assert_close(batch["features"].mean(1), torch.zeros(4, 80), atol=1e-3, rtol=0)
    torch.testing.assert_close(batch["features"].std(1, unbiased=False), torch.ones(4, 80), atol=1e-2, rtol=0)
    with pytest.raises(ConfigError, match=r"tera\.feature_extraction device .* set tera\.cache to auto or none"):
        from_mapping(TERAConfig, {"feature_extraction": "device", "cache": "memory"}, "tera").validate()


def test_lightning_hands_the_objective_features_computed_on_the_device(tmp_path: Path):
    import lightning.pytorch as pl

    from ssl_domains import registry
    from ssl_domains.run import resolve_config, train

    seen: list[list[str]] = []

    class Batches(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(sorted(batch))

    data = write_example_clips(tmp_path / "data")
    small = ["tera.dim=32", "tera.depth=1", "tera.heads=2", "tera.ff_dim=64", "tera.cache=none"]
    cfg = resolve_config(registry.load("tera"), data, [], [*small, "trainer.max_steps=2", "trainer.max_epochs=-1",
                                                          "trainer.progress_bar=false"])  # fmt: skip
    train(cfg, tmp_path / "run", callbacks=[Batches()])
    assert seen == [["features", "id", "label", "length", "split"]] * 2


def test_fbank_statistics_are_summed_clip_by_clip_and_cached_with_their_files(tmp_path: Path, monkeypatch):
    from ssl_domains_audio import data

    root = write_example_clips(tmp_path)
    frames = [torch.randn(50 + 9 * i, 4) * 3 - 4 for i in range(6)]
    every = torch.cat(frames).double()
    mean, std = data.dataset_statistics(iter(frames))
    assert mean == pytest.approx(float(every.mean()), abs=1e-12)
    assert std == pytest.approx(float(every.std(unbiased=False)), abs=1e-12)
    decoded = []
    real = data.clip_features
    monkeypatch.setattr(data, "clip_features", lambda clip, *a: decoded.append(clip.path) or real(clip, *a))

    def ssast(**overrides) -> AudioDataModule:
        cfg = from_mapping(SSASTConfig, {"cache": "none", **overrides}, "ssast")
        dm = AudioDataModule(root, cfg, kind="fbank", pad_multiple=16)
        dm.setup("fit")
        return dm

    first = ssast()
    assert len(decoded) == 27  # every training clip, once
    decoded.clear()
    again = ssast()
    assert decoded == [] and again.fitted.get("norm") == first.fitted.get("norm")  # from the cache: nothing decoded
    soundfile.write(str(root / "0_ann_0.wav"), synthetic_clip(0, 0, 7, 8000), 8000)  # a file of the sample changes
    ssast()
    assert len(decoded) == 27
    decoded.clear()
    ssast(index_cache=False)
    assert len(decoded) == 27
