"""Audio plugins' data: discovery, decoding, features, speaker splits, batching, and every class of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN, DataError
from ssl_domains.config import from_mapping
from ssl_domains.data import PackedList
from ssl_domains_audio.data import AudioDataModule
from ssl_domains_audio.features import band_range, kaldi_fbank, log_mel, num_frames, warp_frequency
from ssl_domains_audio.formats import find_clips, read_audio
from ssl_domains_audio.plugin import FSDD_NAMES, SSASTConfig, TERAConfig
from ssl_domains_audio.synthetic import synthetic_clip, write_example_clips


def _module(path: Path, kind: str = "logmel", **overrides) -> AudioDataModule:
    config_type = TERAConfig if kind.startswith("logmel") else SSASTConfig
    cfg = from_mapping(config_type, {"batch_size": 4, **overrides}, "audio")
    dm = AudioDataModule(path, cfg, kind=kind, pad_multiple=16 if kind == "fbank" else 1)
    dm.setup("fit")
    return dm


def test_names_parse_into_labels_and_speakers_recursively(tmp_path: Path):
    root = write_example_clips(tmp_path)
    (root / "sub").mkdir()
    soundfile.write(str(root / "sub" / "7_zed_0.flac"), synthetic_clip(1, 1, 0), 8000)
    soundfile.write(str(root / "sub" / "unlabelled.ogg"), synthetic_clip(1, 1, 1), 8000, format="OGG")
    clips = {c.path.name: c for c in find_clips(root, FSDD_NAMES)}
    assert len(clips) == 27 + 2
    assert (clips["2_bob_1.wav"].label, clips["2_bob_1.wav"].speaker) == ("2", "bob")
    assert (clips["7_zed_0.flac"].label, clips["7_zed_0.flac"].speaker) == ("7", "zed")
    assert clips["unlabelled.ogg"].label is None


def test_manifest_csv_lists_clips_relative_to_itself(tmp_path: Path):
    root = write_example_clips(tmp_path)
    (tmp_path / "list.csv").write_text("path,label,speaker\nclips/0_ann_0.wav,zero,x\nclips/1_bob_0.wav,,\n")
    clips = find_clips(tmp_path / "list.csv", FSDD_NAMES)
    assert [(c.path, c.label, c.speaker) for c in clips] == [
        (root / "0_ann_0.wav", "zero", "x"),
        (root / "1_bob_0.wav", "1", "bob"),  # empty manifest cells fall back to the file name
    ]


def test_bad_manifests_name_the_file_and_line(tmp_path: Path):
    write_example_clips(tmp_path)
    (tmp_path / "short.csv").write_text("path,label\nclips/0_ann_0.wav,zero\n\n,one\n")
    with pytest.raises(DataError, match=r"short\.csv, line 4: no 'path' value"):
        find_clips(tmp_path / "short.csv", FSDD_NAMES)
    (tmp_path / "latin1.csv").write_bytes("path,label\nclips/0_ann_0.wav,z\xe9ro\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: cannot be read as a UTF-8 CSV manifest"):
        find_clips(tmp_path / "latin1.csv", FSDD_NAMES)


def test_decoding_resamples_to_16k_and_downmixes(tmp_path: Path):
    stereo = np.stack([synthetic_clip(0, 0, 0), np.zeros_like(synthetic_clip(0, 0, 0))], axis=1)
    soundfile.write(str(tmp_path / "s.wav"), stereo, 8000)
    mono = read_audio(tmp_path / "s.wav", 16000, 0.1)
    assert mono.ndim == 1 and abs(len(mono) - 2 * len(stereo)) <= 1
    original = np.abs(stereo[:, 0]).max() / 2  # the mean of the channel and silence
    assert abs(np.abs(mono).max() - original) < 0.05


def test_features_follow_the_recipes():
    samples = np.random.default_rng(0).normal(size=8000).astype(np.float32)  # 0.5 s at 16 kHz
    feats = log_mel(samples)
    assert feats.shape == (num_frames(8000, "logmel"), 80) == (51, 80)
    torch.testing.assert_close(feats.mean(0), torch.zeros(80), atol=1e-4, rtol=0)  # per-utterance CMVN
    torch.testing.assert_close(feats.std(0, unbiased=False), torch.ones(80), atol=1e-3, rtol=0)
    fbank = kaldi_fbank(samples)
    assert fbank.shape == (num_frames(8000, "fbank"), 128) == (48, 128)
    # the log-mel scale is invariant to the clip's gain (TERA's -25 dB RMS scaling); raw fbank is not
    torch.testing.assert_close(log_mel(3 * samples), feats, atol=1e-4, rtol=0)
    # (Kaldi floors tiny energies, hence the tolerance)
    assert (kaldi_fbank(3 * samples) - fbank).mean() == pytest.approx(2 * np.log(3), abs=0.05)


def test_test_speakers_never_reach_the_training_loader(tmp_path: Path):
    dm = _module(write_example_clips(tmp_path), test_speakers=["cyd"])
    assert {dm.speakers[i] for i in dm.train_indices} == {"ann", "bob"}
    seen = torch.cat([b["id"] for b in dm.train_dataloader()])
    assert set(dm.speakers[seen.numpy()]) == {"ann", "bob"}
    assert set(dm.split[torch.as_tensor(np.flatnonzero(dm.speakers == "cyd"))].tolist()) == {SPLIT_TEST}
    assert set(dm.split[torch.as_tensor(dm.train_indices)].tolist()) == {SPLIT_TRAIN}
    predicted = torch.cat([b["id"] for b in dm.predict_dataloader()])
    assert sorted(predicted.tolist()) == list(range(27))  # every clip once, in the clean view
    assert dm.fitted["classes"] == ["0", "1", "2"]


def test_batches_are_padded_per_batch_and_cropped(tmp_path: Path):
    dm = _module(write_example_clips(tmp_path), crop_frames=20)
    batch = next(iter(dm.train_dataloader()))
    assert batch["features"].shape[1] == int(batch["length"].max()) <= 20
    for row, length in enumerate(batch["length"].tolist()):
        assert batch["features"][row, length:].abs().sum() == 0
    fb = _module(write_example_clips(tmp_path / "f"), kind="fbank")
    batch = next(iter(fb.predict_dataloader()))
    assert batch["features"].shape[1] % 16 == 0 and batch["features"].shape[2] == 128


def test_fbank_statistics_come_from_training_speakers_and_travel_with_the_run(tmp_path: Path):
    root = write_example_clips(tmp_path)
    dm = _module(root, kind="fbank", test_speakers=["cyd"])
    raw = torch.cat([dm._raw(i) for i in dm.train_indices])
    assert dm.fitted["norm"] == pytest.approx([float(raw.double().mean()), float(raw.double().std(unbiased=False))])
    normalised = torch.cat([dm.features_of(i) for i in dm.train_indices])
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(normalised.std()) == pytest.approx(0.5, abs=1e-3)  # SSAST divides by 2 std
    again = AudioDataModule(root, dm.cfg, kind="fbank")
    again.load_state_dict({"norm": [1.0, 2.0], "classes": ["0", "1", "2"]})  # embedding new data: stats reused
    again.setup("predict")
    assert again.fitted["norm"] == [1.0, 2.0]
    fixed = _module(root, kind="fbank", norm_mean=-4.2677393, norm_std=4.5689974)
    assert fixed.fitted["norm"] == [-4.2677393, 4.5689974]


# ---- bad input: one clear error naming the file -------------------------------------------------------------


def test_corrupt_file_is_named(tmp_path: Path):
    root = write_example_clips(tmp_path)
    (root / "3_ann_9.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    with pytest.raises(DataError, match=r"3_ann_9\.wav.*cannot be (read|decoded).*re-export or remove"):
        _module(root)


def test_empty_file_is_named(tmp_path: Path):
    root = write_example_clips(tmp_path)
    soundfile.write(str(root / "3_ann_9.wav"), np.zeros(0, np.float32), 8000)
    with pytest.raises(DataError, match=r"3_ann_9\.wav: holds no audio samples"):
        _module(root)


def test_too_short_clip_is_named_with_the_fix(tmp_path: Path):
    root = write_example_clips(tmp_path)
    soundfile.write(str(root / "3_ann_9.wav"), np.ones(200, np.float32) * 0.1, 8000)  # 25 ms
    with pytest.raises(DataError, match=r"3_ann_9\.wav: 0\.025 s is shorter than the minimum of 0\.1 s.*min_seconds"):
        _module(root)


def test_nan_samples_are_named(tmp_path: Path):
    root = write_example_clips(tmp_path)
    clip = synthetic_clip(0, 0, 0)
    clip[100] = np.nan
    soundfile.write(str(root / "3_ann_9.wav"), clip, 8000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"3_ann_9\.wav: contains NaN"):
        _module(root)


def test_unsupported_format_is_named_with_a_conversion(tmp_path: Path):
    (tmp_path / "a.m4a").write_bytes(b"ftyp")
    with pytest.raises(DataError, match=r"a\.m4a: \.m4a is not supported.*ffmpeg"):
        find_clips(tmp_path, FSDD_NAMES)
    (tmp_path / "list.csv").write_text("path\na.m4a\n")
    with pytest.raises(DataError, match=r"a\.m4a: \.m4a is not supported"):
        find_clips(tmp_path / "list.csv", FSDD_NAMES)


def test_label_regex_and_speakers_are_checked(tmp_path: Path):
    root = write_example_clips(tmp_path)
    with pytest.raises(DataError, match=r"has neither of the named groups label and speaker"):
        find_clips(root, r"(\d+)_.*")
    assert {c.speaker for c in find_clips(root, r"(?P<label>\d+)_.*")} == {None}  # either group may be left out
    with pytest.raises(
        DataError, match=r"test_speakers \['zoe'\] match no clip; speakers found: \['ann', 'bob', 'cyd'\]"
    ):
        _module(root, test_speakers=["zoe"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no WAV, FLAC, OGG, Opus or MP3"):
        find_clips(tmp_path / "empty", FSDD_NAMES)


def test_tera_dataset_cmvn_uses_per_band_training_statistics(tmp_path: Path):
    dm = _module(write_example_clips(tmp_path), kind="logmel_global", test_speakers=["cyd"])
    mean, std = dm.fitted["norm"]
    assert len(mean) == len(std) == 80
    frames = torch.cat([dm.features_of(i) for i in dm.train_indices])
    torch.testing.assert_close(frames.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
    torch.testing.assert_close(frames.std(0, unbiased=False), torch.ones(80), atol=1e-3, rtol=0)
    # unlike per-utterance CMVN, one clip keeps its own mean spectrum (a one-word clip's vowel)
    assert float(dm.features_of(int(dm.train_indices[0])).mean(0).abs().max()) > 0.1


def test_stats_command_prints_config_lines(tmp_path: Path):
    from tests.conftest import run_cli

    root = write_example_clips(tmp_path)
    done = run_cli("run", "ssast", "stats", "--data", str(root))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split("=") for line in done.stdout.splitlines() if not line.startswith("#"))
    feats = torch.cat([kaldi_fbank(read_audio(c.path, 16000, 0.1)) for c in find_clips(root, FSDD_NAMES)]).double()
    assert float(lines["ssast.norm_mean"]) == pytest.approx(float(feats.mean()), abs=1e-5)
    assert float(lines["ssast.norm_std"]) == pytest.approx(float(feats.std(unbiased=False)), abs=1e-5)


def test_f_max_puts_every_band_inside_an_8k_recording(tmp_path: Path):
    soundfile.write(str(tmp_path / "c.wav"), synthetic_clip(1, 1, 0), 8000)
    samples = read_audio(tmp_path / "c.wav", 16000, 0.1)  # 8 kHz audio: nothing above 4 kHz after resampling
    full = log_mel(samples, cmvn=False)
    band_limited = log_mel(samples, cmvn=False, f_max=4000)
    assert float(full[:, -1].mean()) < float(full[:, 10].mean()) - 10  # the top band holds the noise floor
    assert float(band_limited[:, 60:].mean()) > float(full[:, 60:].mean()) + 3  # the top bands now hold signal
    assert kaldi_fbank(samples, f_max=4000).shape[1] == 128


@pytest.mark.parametrize("kind", ["logmel_global", "fbank"])
def test_vtlp_moves_a_tone_like_a_shorter_vocal_tract_and_touches_training_crops_only(tmp_path: Path, kind: str):
    t = np.arange(16000) / 16000
    tone = {f: np.sin(2 * np.pi * f * t).astype(np.float32) for f in (1000, 1100)}

    def compute(samples: np.ndarray) -> torch.Tensor:
        return kaldi_fbank(samples, f_max=4000) if kind == "fbank" else log_mel(samples, cmvn=False, f_max=4000)

    peak = {f: int(compute(s).mean(0).argmax()) for f, s in tone.items()}
    warped = warp_frequency(compute(tone[1000]), 1.1, *band_range(kind, 4000))
    assert peak[1100] > peak[1000] and int(warped.mean(0).argmax()) == peak[1100]  # 1000 Hz * 1.1 lands at 1100 Hz
    unwarped = warp_frequency(compute(tone[1000]), 1.0, *band_range(kind, 4000))
    assert torch.allclose(unwarped, compute(tone[1000]), atol=1e-3)

    root = write_example_clips(tmp_path)
    plain, perturbed = _module(root, kind), _module(root, kind, vtlp=0.1)
    torch.manual_seed(0)
    clean = next(iter(plain.predict_dataloader()))["features"]
    assert torch.equal(next(iter(perturbed.predict_dataloader()))["features"], clean)  # embed time: no warp
    index = int(plain.train_indices[0])
    draws = torch.stack([perturbed.features_of(index, warp=a) for a in (0.9, 1.1)])
    assert not torch.allclose(draws[0], draws[1]) and torch.allclose(
        perturbed.features_of(index), plain.features_of(index)
    )
    long_crops = _module(root, kind, vtlp=0.1, crop_frames=10_000)  # whole clips: rows comparable to features_of
    batch = next(iter(long_crops.train_dataloader()))
    for row, (index, length) in enumerate(zip(batch["id"].tolist(), batch["length"].tolist(), strict=True)):
        assert not torch.allclose(batch["features"][row, :length], long_crops.features_of(index), atol=1e-3)


def test_synthesized_speech_is_unlabelled_16k_and_feeds_pretraining_only(tmp_path: Path):
    from ssl_domains_audio.tts import DIGITS, synthesize

    paths = synthesize(tmp_path / "tts", clips=4, seed=0)
    assert [p.suffix for p in paths] == [".flac"] * 4 and not list((tmp_path / "tts").glob("*.partial"))
    for path in paths:
        info = soundfile.info(str(path))
        assert info.samplerate == 16000 and info.channels == 1 and 0.2 < info.duration < 2.0
    assert all(find_clips(p, FSDD_NAMES)[0].label is None for p in paths)
    assert synthesize(tmp_path / "again", clips=4, seed=0)[2].name == paths[2].name  # the seed fixes the voices
    assert len(DIGITS) == 10

    root = write_example_clips(tmp_path)
    dm = _module(root, test_speakers=["cyd"], unlabelled=[str(tmp_path / "tts")])
    assert len(dm.clips) == 27 + 4 and dm.num_source_clips == 27
    assert isinstance(dm.clips, PackedList) and dm.clips[27].path == paths[0]  # the extras follow, packed too
    assert dm.clips[27].label is None and dm.clips[27].speaker is None
    extra = np.arange(27, 31)
    assert set(extra) <= set(dm.train_indices.tolist()) and (dm.label[extra] == -1).all()
    ids = torch.cat([b["id"] for b in dm.predict_dataloader()])
    assert sorted(ids.tolist()) == list(range(27))  # embed and the probes see the source clips only
    cfg = from_mapping(TERAConfig, {"unlabelled": [str(tmp_path / "gone")]}, "audio")
    at_embed_time = AudioDataModule(root, cfg, kind="logmel")
    at_embed_time.setup("predict")  # a saved run embeds without its (maybe deleted) pretraining extras
    assert len(at_embed_time.clips) == 27
    with pytest.raises(DataError, match="gone does not exist"):
        AudioDataModule(root, cfg, kind="logmel").setup("fit")
