"""``ssl-domains import|export --plugin croma``: CROMA's released files and torchgeo's layout (weights_croma.py,
weights_croma_out.py).

The files are written here from one of our models through the documented key map in reverse (Fuller et al.
2023's ``use_croma.py`` layout; the reference code itself is checked in benchmarks/_equiv_croma_import.py):
importing them must give back the same network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ssl_domains import UserError, load_encoder, registry
from ssl_domains.transfer import export_weights, import_weights
from ssl_domains_rs.model import CROMA, alibi_bias, alibi_slopes, grid_positions
from ssl_domains_rs.weights_croma_out import to_released, to_torchgeo, write_released, write_torchgeo

DATA = Path(__file__).resolve().parents[3] / "datasets" / "sentinel_s1s2" / "bigearthnet_v1_mm"
DIM, DEPTH = 32, 2
_ENCODER = {"norm1": "0.input_norm", "qkv": "0.to_qkv", "proj": "0.to_out", "norm2": "1.input_norm",
            "ff.0": "1.net.0", "ff.3": "1.net.3"}  # fmt: skip
_JOINT = {"norm1": "0.input_norm", "qkv": "0.to_qkv", "proj": "0.to_out", "norm_cross": "1.input_norm",
          "q_cross": "1.to_q", "proj_cross": "1.to_out", "norm2": "2.input_norm", "ff.0": "2.net.0",
          "ff.3": "2.net.3"}  # fmt: skip


def _model() -> CROMA:
    torch.manual_seed(0)
    model = CROMA(12, 2, 8, DIM, DEPTH, 16, 32, 1, 8, qkv_bias=False, shared_cross_norm=True,
                  joint_self_bias="cross", alibi_slopes="alibi", decoder_positions="mae")  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _released(model: CROMA) -> dict[str, dict[str, torch.Tensor]]:
    """Ours -> use_croma.py's five entries (the reader's key map, reversed)."""
    out: dict[str, dict[str, torch.Tensor]] = {e: {} for e in ("s1_encoder", "s1_GAP_FFN", "s2_encoder",
                                                               "s2_GAP_FFN", "joint_encoder")}  # fmt: skip
    for key, value in model.state_dict().items():
        part, _, rest = key.partition(".")
        leaf = rest.rsplit(".", 1)[-1]
        if part in ("optical", "radar"):
            entry = out["s2_encoder" if part == "optical" else "s1_encoder"]
            if rest.startswith("embed."):
                entry[f"linear_input.{leaf}"] = value
            elif rest.startswith("norm."):
                entry[f"transformer.norm_out.{leaf}"] = value
            else:
                _, i, tail = rest.split(".", 2)  # blocks.i.<module>.<leaf>
                module = tail.rsplit(".", 1)[0]
                entry[f"transformer.layers.{i}.{_ENCODER[module]}.{leaf}"] = value
        elif part in ("gap_optical", "gap_radar"):
            out["s2_GAP_FFN" if part == "gap_optical" else "s1_GAP_FFN"][rest] = value
        elif part == "joint_norm":
            out["joint_encoder"][f"norm_out.{leaf}"] = value
        elif part == "joint":
            i, module = rest.split(".", 1)[0], rest.split(".", 1)[1].rsplit(".", 1)[0]
            if module == "kv_cross":
                k, v = value.chunk(2)
                out["joint_encoder"][f"layers.{i}.1.to_k.{leaf}"] = k
                out["joint_encoder"][f"layers.{i}.1.to_v.{leaf}"] = v
            elif module != "norm_context":  # the same module as norm_cross
                out["joint_encoder"][f"layers.{i}.{_JOINT[module]}.{leaf}"] = value
    return out


def _torchgeo(model: CROMA, bias: bool = True) -> dict[str, torch.Tensor]:
    flat = {f"{e}.{k}": v for e, part in _released(model).items() for k, v in part.items()}
    if bias:
        pos = grid_positions((15, 15), torch.device("cpu"))[None]
        flat["attn_bias"] = alibi_bias(pos, pos, alibi_slopes(16))
    return flat


def _import(tmp_path: Path, payload: object, fmt: str) -> tuple[torch.nn.Module, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{fmt}.pt"
    torch.save(payload, path)
    run = import_weights(registry.load("croma"), path, DATA, tmp_path / "run", fmt=fmt)
    return load_encoder(run, DATA).model, run


def _same_network(ours: torch.nn.Module, model: CROMA) -> None:
    for key, value in model.state_dict().items():
        if not key.startswith(("decoder.", "proj_", "logit_scale")):
            assert torch.equal(ours.state_dict()[key], value), key
    torch.manual_seed(1)
    batch = {"radar": torch.rand(2, 2, 32, 40), "optical": torch.rand(2, 12, 32, 40)}
    with torch.no_grad():
        for modality in ("optical", "radar", "joint"):
            ours.embed_modality = model.embed_modality = modality
            assert torch.allclose(ours.eval().embed(batch), model.embed(batch), atol=1e-6), modality


def test_released_file_round_trips(tmp_path: Path):
    model = _model()
    ours, run = _import(tmp_path, _released(model), "croma")
    _same_network(ours, model)
    assert ours.joint[0].norm_context is ours.joint[0].norm_cross and ours.joint_self_bias == "cross"
    assert ours.decoder.positions == "mae" and ours.optical.heads == 16 and "qkv.bias" not in str(ours.state_dict())
    cfg = yaml.safe_load((run / "config.yaml").read_text())["croma"]
    assert (cfg["dim"], cfg["depth"], cfg["patch"], cfg["chip"], cfg["heads"]) == (DIM, DEPTH, 8, 120, 16)
    record = yaml.safe_load((run / "imported.yaml").read_text())
    assert record["format"] == "croma" and "decoder.head.weight" in record["fresh"]
    assert any("REFERENCE_CODE" in note for note in record["notes"])


def test_torchgeo_state_dict_round_trips(tmp_path: Path):
    model = _model()
    ours, _ = _import(tmp_path, _torchgeo(model), "torchgeo")
    _same_network(ours, model)
    ours, _ = _import(tmp_path / "no_bias", _torchgeo(model, bias=False), "torchgeo")
    _same_network(ours, model)


def test_wrong_files_are_refused_with_the_fix(tmp_path: Path):
    model = _model()
    released, flat = _released(model), _torchgeo(model)
    deeper = {k.replace(".layers.0.", ".layers.1."): v for k, v in released["s1_encoder"].items() if ".layers.0." in k}
    cases = [
        (flat, "croma", "use --format torchgeo"),
        (released, "torchgeo", "use --format croma"),
        ({"state_dict": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, "croma", "not a released CROMA file"),
        ({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, "torchgeo", "not torchgeo's CROMA module"),
        ({k: v for k, v in flat.items() if k.startswith(("s2_", "attn"))}, "torchgeo", "nothing under s1_encoder"),
        ({**flat, "attn_bias": flat["attn_bias"] + 0.5}, "torchgeo", "not the 2D-ALiBi table"),
        ({**released, "s1_GAP_FFN": {"2.weight": torch.zeros(1)}}, "croma", "not CROMA's GAP head"),
        ({**released, "s1_encoder": {**released["s1_encoder"], **deeper}}, "croma", "half the optical depth"),
        ({**released, "joint_encoder": {**released["joint_encoder"], "layers.0.1.to_kv.weight": torch.zeros(1)}},
         "croma", "not use_croma.py's BaseTransformerCrossAttn"),
    ]  # fmt: skip
    for i, (payload, fmt, message) in enumerate(cases):
        with pytest.raises(UserError, match=message):
            _import(tmp_path / str(i), payload, fmt)
        assert not (tmp_path / str(i) / "run").exists()


# ---- out: ``ssl-domains export --format croma|torchgeo`` (weights_croma_out.py) -----------------------------------
def _same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], dict):
            _same_tensors(a[key], b[key])
        else:
            assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


def test_writers_are_the_readers_inverse(tmp_path: Path):
    model = _model()
    _same_tensors(to_released(model), _released(model))  # the hand-written reverse map above
    _same_tensors(to_torchgeo(model), _torchgeo(model, bias=False))
    for fmt, writer in (("croma", write_released), ("torchgeo", write_torchgeo)):
        path = tmp_path / f"{fmt}.pt"
        writer(model, None, path)
        ours, _ = _import(tmp_path / fmt, torch.load(path, weights_only=True), fmt)
        _same_network(ours, model)


def test_export_of_an_imported_run_gives_the_file_back(tmp_path: Path):
    model = _model()
    run = import_weights(registry.load("croma"), _save(tmp_path / "in.pt", _released(model)), DATA,
                         tmp_path / "run", fmt="croma")  # fmt: skip
    for fmt, original in (("croma", _released(model)), ("torchgeo", _torchgeo(model, bias=False))):
        out = export_weights(run, fmt, tmp_path / f"out-{fmt}.pt")
        _same_tensors(torch.load(out, weights_only=True), original)


def _save(path: Path, payload: object) -> Path:
    torch.save(payload, path)
    return path


def _variant(**kwargs) -> CROMA:
    sizes = {"optical_channels": 12, "patch": 8, "dim": DIM, "depth": DEPTH, "heads": 16}
    sizes.update({k: kwargs.pop(k) for k in list(kwargs) if k in sizes})
    torch.manual_seed(0)
    return CROMA(sizes["optical_channels"], 2, sizes["patch"], sizes["dim"], sizes["depth"], sizes["heads"], 32, 1,
                 8, **{"qkv_bias": False, "shared_cross_norm": True, **kwargs})  # fmt: skip


def test_unfaithful_models_are_refused_with_the_fix(tmp_path: Path):
    biased = _variant(qkv_bias=True)  # PyTorch's Linear init: nonzero biases
    two_norms = _variant(shared_cross_norm=False)
    with torch.no_grad():
        two_norms.joint[0].norm_context.weight.add_(0.1)
    cases = [
        (biased, "no q/k/v biases.*--set croma.qkv_bias=false"),
        (two_norms, "norm_cross and norm_context differ in joint.0.*--set croma.shared_cross_norm=true"),
        (_variant(heads=8), "8 heads.*--set croma.heads=16"),
        (_variant(patch=4), "patch 4.*--set croma.patch=8"),
        (_variant(optical_channels=13), "2 radar \\+ 13 optical bands"),
        (_variant(depth=1), "optical depth 1 with radar and joint 1"),
    ]
    for model, message in cases:
        for fmt, writer in (("croma", write_released), ("torchgeo", write_torchgeo)):
            path = tmp_path / f"{fmt}.pt"
            with pytest.raises(UserError, match=f"--format {fmt}: .*{message}"):
                writer(model, None, path)
            assert not path.exists()


def test_zero_biases_and_equal_norms_are_written(tmp_path: Path):
    model = _variant(qkv_bias=True, shared_cross_norm=False)  # two norms at their identical initialisation
    with torch.no_grad():
        for module in model.modules():
            for name in ("qkv", "q_cross", "kv_cross"):
                if isinstance(getattr(module, name, None), torch.nn.Linear):
                    getattr(module, name).bias.zero_()
    released = to_released(model)
    assert not any(k.endswith(("to_qkv.bias", "to_q.bias", "to_k.bias", "to_v.bias")) for k in released["s2_encoder"])
    assert not any("norm_context" in k for k in released["joint_encoder"])
    ours, _ = _import(tmp_path, released, "croma")
    _same_network_no_bias(ours, model)


def _same_network_no_bias(ours: torch.nn.Module, model: CROMA) -> None:
    torch.manual_seed(1)
    batch = {"radar": torch.rand(2, 2, 32, 40), "optical": torch.rand(2, 12, 32, 40)}
    with torch.no_grad():
        for modality in ("optical", "radar", "joint"):
            ours.embed_modality = model.embed_modality = modality
            assert torch.allclose(ours.eval().embed(batch), model.eval().embed(batch), atol=1e-6), modality
