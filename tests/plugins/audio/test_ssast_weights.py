"""SSAST's released-checkpoint format (``weights_ssast``): sizes from shapes, the key map both ways, clear errors.

No reference checkout is needed: reference-shaped state dicts are built here with the key names and shapes of
``nn.DataParallel(ASTModel(pretrain_stage=True)).state_dict()`` (YuanGongND/ssast @ a1a3eec, timm 0.4.5 DeiT);
``benchmarks/equivalence.py --plugin ssast`` checks the same code against the reference itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_domains import UserError, load_encoder, registry
from ssl_domains.config import from_mapping
from ssl_domains.transfer import export_weights, import_weights, load_strict
from ssl_domains_audio import weights_ssast
from ssl_domains_audio.model import SSASTModel
from ssl_domains_audio.plugin import SSASTConfig, SSASTPlugin
from ssl_domains_audio.synthetic import write_example_clips


def _reference_state(
    dim: int, depth: int, mode: str = "patch", fdim: int = 128, tdim: int = 64, prefix: str = "module."
) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of the reference's pretraining ASTModel (values random)."""
    fshape, tshape = (16, 16) if mode == "patch" else (fdim, 2)
    patches = (fdim // fshape) * (tdim // tshape)
    ff = 4 * dim
    sd = {
        "p_input_fdim": torch.tensor(fdim),
        "p_input_tdim": torch.tensor(tdim),
        "v.cls_token": torch.randn(1, 1, dim),
        "v.dist_token": torch.randn(1, 1, dim),
        "v.pos_embed": torch.randn(1, 2 + patches, dim),
        "v.patch_embed.proj.weight": torch.randn(dim, 1, fshape, tshape),
        "v.patch_embed.proj.bias": torch.randn(dim),
        "v.norm.weight": torch.randn(dim),
        "v.norm.bias": torch.randn(dim),
        "v.head.weight": torch.zeros(1000, dim),
        "v.head.bias": torch.zeros(1000),
        "v.head_dist.weight": torch.zeros(1000, dim),
        "v.head_dist.bias": torch.zeros(1000),
        "mask_embed": torch.randn(1, 1, dim),
    }
    for head in ("cpredlayer", "gpredlayer"):
        sd.update({f"{head}.0.weight": torch.randn(dim, dim), f"{head}.0.bias": torch.randn(dim)})
        sd.update({f"{head}.2.weight": torch.randn(256, dim), f"{head}.2.bias": torch.randn(256)})
    for i in range(depth):
        for name, shape in (("norm1", (dim,)), ("norm2", (dim,))):
            sd[f"v.blocks.{i}.{name}.weight"], sd[f"v.blocks.{i}.{name}.bias"] = torch.randn(shape), torch.randn(shape)
        for name, out, inp in (("attn.qkv", 3 * dim, dim), ("attn.proj", dim, dim), ("mlp.fc1", ff, dim),
                               ("mlp.fc2", dim, ff)):  # fmt: skip
            sd[f"v.blocks.{i}.{name}.weight"], sd[f"v.blocks.{i}.{name}.bias"] = torch.randn(out, inp), torch.randn(out)
    return {prefix + k: v for k, v in sd.items()}


def _model(layer: dict, **overrides) -> tuple[SSASTModel, SSASTConfig]:
    cfg = from_mapping(SSASTConfig, {**layer["ssast"], **overrides}, "ssast")
    plugin = SSASTPlugin()
    return plugin.model(cfg, None), cfg


@pytest.mark.parametrize(
    ("dim", "heads", "size", "mode"),
    [(192, 3, "Tiny", "patch"), (384, 6, "Small", "patch"), (768, 12, "Base", "frame"), (192, 3, "Tiny", "frame")],
)
def test_sizes_and_variant_come_from_the_shapes(dim, heads, size, mode):
    imported = weights_ssast.from_reference(_reference_state(dim, depth=2, mode=mode, tdim=96))
    layer = imported.config["ssast"]
    assert layer["dim"] == dim and layer["heads"] == heads and layer["depth"] == 2 and layer["ff_dim"] == 4 * dim
    assert layer["mode"] == mode and layer["num_mel_bins"] == 128 and layer["max_frames"] == 96
    assert (layer["norm_mean"], layer["norm_std"]) == weights_ssast.REFERENCE_NORM
    assert layer["position_crop"] == "centre" and imported.fresh == ()
    assert f"SSAST-{size}-{mode.capitalize()}" in imported.notes[0]
    model, _ = _model(imported.config)
    assert load_strict(model, imported, Path("x.pth")) == []


def test_key_map_places_tokens_positions_and_blocks():
    sd = _reference_state(192, depth=1, tdim=64)
    state = weights_ssast.from_reference(sd).state_dict
    assert torch.equal(state["cls_tokens"][0, 1], sd["module.v.dist_token"][0, 0])
    # patch (row 2, column 3) of an 8 x 4 grid is token 2 * 4 + 3 after the two cls tokens
    assert torch.equal(state["positions"][0, 2, 3], sd["module.v.pos_embed"][0, 2 + 2 * 4 + 3])
    assert torch.equal(state["blocks.0.ff.3.weight"], sd["module.v.blocks.0.mlp.fc2.weight"])
    assert torch.equal(state["discriminative_head.2.bias"], sd["module.cpredlayer.2.bias"])


def test_the_module_prefix_is_optional():
    torch.manual_seed(0)
    with_prefix = _reference_state(192, depth=1)
    without = {k.removeprefix("module."): v for k, v in with_prefix.items()}
    a, b = weights_ssast.from_reference(with_prefix), weights_ssast.from_reference(without)
    assert a.config == b.config and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_unknown_keys_are_one_error_naming_them():
    sd = _reference_state(192, depth=1)
    sd["module.v.extra.weight"] = torch.zeros(1)
    sd["module.mlp_head.0.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"\(2\): module\.mlp_head\.0\.weight, module\.v\.extra\.weight"):
        weights_ssast.from_reference(sd, "my.pth")


def test_shape_mismatch_and_bad_tables_are_named():
    sd = _reference_state(192, depth=1)
    sd["module.cpredlayer.2.weight"] = torch.zeros(128, 192)
    imported = weights_ssast.from_reference(sd)
    model, _ = _model(imported.config)
    with pytest.raises(UserError, match=r"shape mismatch \(1\): discriminative_head\.2\.weight: file \(128, 192\)"):
        load_strict(model, imported, Path("my.pth"))
    sd = _reference_state(192, depth=1)
    sd["module.v.pos_embed"] = torch.zeros(1, 30, 192)
    with pytest.raises(UserError, match=r"module\.v\.pos_embed is \(1, 30, 192\)"):
        weights_ssast.from_reference(sd, "my.pth")
    sd = _reference_state(192, depth=1)
    del sd["module.p_input_tdim"]
    with pytest.raises(UserError, match=r"no module\.p_input_tdim"):
        weights_ssast.from_reference(sd, "my.pth")


def test_missing_heads_are_fresh_and_unknown_widths_ask_for_heads():
    sd = {k: v for k, v in _reference_state(192, depth=1).items() if "gpredlayer" not in k}
    imported = weights_ssast.from_reference(sd)
    assert imported.fresh == ("generative_head",)
    model, _ = _model(imported.config)
    fresh = load_strict(model, imported, Path("x.pth"))
    assert fresh == [f"generative_head.{i}.{kind}" for i in (0, 2) for kind in ("bias", "weight")]
    odd = weights_ssast.from_reference(_reference_state(40, depth=1))
    assert "heads" not in odd.config["ssast"] and "--set ssast.heads=N" in odd.notes[0]


def _tiny_model(**overrides) -> tuple[SSASTModel, SSASTConfig]:
    layer = {"dim": 32, "depth": 2, "heads": 2, "ff_dim": 64, "max_frames": 64, "position_crop": "centre"}
    cfg = from_mapping(SSASTConfig, {**layer, **overrides}, "ssast")
    return SSASTPlugin().model(cfg, None).eval(), cfg


@pytest.mark.parametrize("mode", ["patch", "frame"])
def test_export_then_import_gives_the_same_embeddings(tmp_path: Path, mode: str):
    torch.manual_seed(0)
    model, cfg = _tiny_model(mode=mode)
    path = tmp_path / "exported.pth"
    weights_ssast.write(model, cfg, path, any_size=True)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(_reference_state(32, depth=2, mode=mode))  # the reference's keys, no others
    assert int(state["module.p_input_tdim"]) == 64 and int(state["module.p_input_fdim"]) == 128
    imported = weights_ssast.read(path)
    back, _ = _model(imported.config, heads=2)
    load_strict(back, imported, path)
    x = torch.randn(3, 48, 128)
    batch = {"features": x, "length": torch.tensor([48, 32, 20])}
    with torch.no_grad():
        torch.testing.assert_close(back.eval().embed(batch), model.embed(batch), rtol=0, atol=0)


def test_import_and_export_through_the_run_folder(tmp_path: Path):
    torch.manual_seed(0)
    model, cfg = _tiny_model()
    weights_ssast.write(model, cfg, tmp_path / "ref.pth", any_size=True)
    data = write_example_clips(tmp_path, labels=2, speakers=2, per_pair=1)
    run = import_weights(registry.load("ssast"), tmp_path / "ref.pth", data, tmp_path / "run",
                         overrides=["ssast.heads=2", "ssast.batch_size=2"])  # fmt: skip
    ours, dm = load_encoder(run, data)
    batch = next(iter(dm.predict_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(ours.embed(batch), model.embed(batch), rtol=0, atol=0)
    assert dm.input_spec()["normalisation"]["mean"] == weights_ssast.REFERENCE_NORM[0]
    with pytest.raises(UserError, match="builds DeiT tiny"):  # 2 layers of width 32: no size the reference builds
        export_weights(run, "ssast", tmp_path / "out.pth")


def test_writer_refuses_what_the_reference_cannot_load(tmp_path: Path):
    model, cfg = _tiny_model(mode="frame", num_mel_bins=64)
    with pytest.raises(UserError, match="heads output 256 values"):
        weights_ssast.write(model, cfg, tmp_path / "x.pth", any_size=True)


def test_centre_crop_is_per_clip_and_ignores_padding():
    torch.manual_seed(0)
    model, _ = _tiny_model(max_frames=128)
    x = torch.randn(1, 48, 128)
    padded = torch.cat([x, torch.zeros(1, 64, 128)], dim=1)
    with torch.no_grad():
        one = model.embed({"features": x, "length": torch.tensor([48])})
        two = model.embed({"features": padded, "length": torch.tensor([48])})
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)
    # a 48-frame clip (3 columns) takes columns 4 - 1 = 3 .. 5 of the 8-column table
    table = model.position_table(torch.tensor([48]), 3)
    torch.testing.assert_close(table.view(1, 8, 3, -1), model.positions[:, :, 3:6])


def test_the_plugin_lists_the_format():
    (fmt,) = SSASTPlugin.weight_formats
    assert (
        fmt.name == "ssast" and fmt.load("reader") is weights_ssast.read and fmt.load("writer") is weights_ssast.write
    )
