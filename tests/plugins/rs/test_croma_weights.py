"""``ssl-domains import --plugin croma``: CROMA's released files and torchgeo's layout (weights_croma.py).

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
from ssl_domains.transfer import import_weights
from ssl_domains_rs.model import CROMA, alibi_bias, alibi_slopes, grid_positions

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
    return load_encoder(run, DATA)[0], run


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
