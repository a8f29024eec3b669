"""T-JEPA weights in the reference's format (jose-melo/t-jepa): the reader, the key map, the table check, export.

No reference checkout is needed: checkpoints are built with random tensors of the shapes the reference's modules
have (``src/encoder.py``, ``src/predictors.py``, ``src/tjepa_transformer.py``) and the keys its
``EarlyStopCounter.cache_model`` saves. ``benchmarks/equivalence.py --plugin tjepa`` checks them against its code.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_domains import DataError, UserError
from ssl_domains.config import from_mapping
from ssl_domains.transfer import ImportedWeights, import_weights, load_strict
from ssl_domains_tabular.model import halves_positions, reference_positions
from ssl_domains_tabular.plugin import TJEPAConfig, TJEPAPlugin
from ssl_domains_tabular.weights_tjepa import check_table, read, write
from tests.conftest import run_cli

REG, N_NUM, CATS, DIM, DEPTH, FF = 1, 3, [3, 4], 8, 2, 12
PDIM, PDEPTH, PFF = 4, 2, 6


def _layer(prefix: str, dim: int, ff: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {
        "self_attn.in_proj_weight": (3 * dim, dim), "self_attn.in_proj_bias": (3 * dim,),
        "self_attn.out_proj.weight": (dim, dim), "self_attn.out_proj.bias": (dim,),
        "linear1.weight": (ff, dim), "linear1.bias": (ff,), "linear2.weight": (dim, ff), "linear2.bias": (dim,),
        "norm1.weight": (dim,), "norm1.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
    }  # fmt: skip
    return {f"{prefix}{k}": torch.randn(*s, generator=gen) for k, s in shapes.items()}


def _head(prefix: str, dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for name, shape in (("layernorm1", (dim,)), ("fc", None), ("layernorm2", (dim,))):
        out[f"{prefix}{name}.weight"] = torch.randn(*(shape or (dim, dim)), generator=gen)
        out[f"{prefix}{name}.bias"] = torch.randn(dim, generator=gen)
    return out


def reference_encoder(seed: int = 0, reg: int = REG, n_num: int = N_NUM, cats: list[int] = CATS) -> dict:
    """A reference ``Encoder.state_dict()`` with random values (template layer and ``pe.pe`` included)."""
    gen = torch.Generator().manual_seed(seed)
    tables = {
        f"tokenizer.category_embeddings.{j}.weight": torch.randn(c, DIM, generator=gen) for j, c in enumerate(cats)
    }
    sd = {
        "tokenizer.weight": torch.randn(reg + n_num, DIM, generator=gen),
        "tokenizer.bias": torch.randn(n_num + len(cats), DIM, generator=gen),
        **tables,
        **_layer("encoder.transformer_layers.", DIM, FF, gen),
        **_head("encoder.", DIM, gen),
        "pe.pe": reference_positions(5000, DIM),
    }
    for i in range(DEPTH):
        sd.update(_layer(f"encoder.transformer.layers.{i}.", DIM, FF, gen))
    return sd


def reference_predictor(seed: int = 1, num_features: int = N_NUM + len(CATS)) -> dict:
    """A reference ``TransformerPredictor.state_dict()`` with random values."""
    gen = torch.Generator().manual_seed(seed)
    sd = {
        "predictor_emb.weight": torch.randn(PDIM, DIM, generator=gen),
        "predictor_emb.bias": torch.randn(PDIM, generator=gen),
        "layer_norm.weight": torch.ones(PDIM), "layer_norm.bias": torch.zeros(PDIM),
        "predictor_pos_embed": halves_positions(num_features, PDIM).unsqueeze(0),
        "mask_token": torch.randn(1, 1, PDIM, generator=gen),
        **_layer("transformer.transformer_layers.", PDIM, PFF, gen), **_head("transformer.", PDIM, gen),
        "predictor_norm.weight": torch.randn(PDIM, generator=gen),
        "predictor_norm.bias": torch.randn(PDIM, generator=gen),
        "predictor_proj.weight": torch.randn(DIM, PDIM, generator=gen),
        "predictor_proj.bias": torch.randn(DIM, generator=gen),
    }  # fmt: skip
    for i in range(PDEPTH):
        sd.update(_layer(f"transformer.transformer.layers.{i}.", PDIM, PFF, gen))
    return sd


def reference_checkpoint(path: Path, **encoder: object) -> Path:
    """The dict ``EarlyStopCounter.cache_model`` saves (``src/utils/checkpointer.py`` L378-L388)."""
    torch.save({
        "epoch": 3, "context_encoder": reference_encoder(0, **encoder),
        "target_encoder": reference_encoder(5, **encoder),
        "predictor": reference_predictor(), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "scaler": {}, "scheduler": {"_step": 3.0}, "weightdecay": {"_step": 3.0}, "train_loss": torch.tensor([0.5]),
    }, path)  # fmt: skip
    return path


def _model(imported: ImportedWeights, cats: list[int] = CATS, n_num: int = N_NUM):
    cfg = from_mapping(TJEPAConfig, imported.config["tjepa"], "tjepa")
    datamodule = SimpleNamespace(
        fitted={"numeric": [f"n{j}" for j in range(n_num)], "categorical": [f"c{j}" for j in range(len(cats))],
                "vocab": {f"c{j}": [str(v) for v in range(c)] for j, c in enumerate(cats)}},
        cardinalities=[c + 1 for c in cats], data="table.csv",
    )  # fmt: skip
    return TJEPAPlugin().model(cfg, datamodule), cfg


def test_reader_infers_the_sizes_and_maps_every_weight(tmp_path: Path):
    path = reference_checkpoint(tmp_path / "epoch_3.pth")
    imported = read(path)
    layer = imported.config["tjepa"]
    assert {k: layer[k] for k in ("dim", "depth", "ff_dim", "num_reg_tokens", "predictor_dim", "predictor_depth",
                                  "predictor_ff_dim", "expect_numeric", "expect_categories")} == {
        "dim": DIM, "depth": DEPTH, "ff_dim": FF, "num_reg_tokens": REG, "predictor_dim": PDIM,
        "predictor_depth": PDEPTH, "predictor_ff_dim": PFF, "expect_numeric": N_NUM, "expect_categories": CATS,
    }  # fmt: skip
    assert layer["block_norm"] == "post" and layer["positions"] == "sincos" and layer["mask_indexing"] == "reference"
    model, _ = _model(imported)
    assert load_strict(model, imported, path) == []  # every key of ours comes from the file, nothing is left over
    ref = reference_encoder(5)
    sd = model.state_dict()
    enc = "target_encoder.module."
    assert torch.equal(sd[f"{enc}reg_tokens"], ref["tokenizer.weight"][:REG])
    assert torch.equal(sd[f"{enc}tokenizer.num_weight"], ref["tokenizer.weight"][REG:])
    assert torch.equal(sd[f"{enc}tokenizer.cat_bias"], ref["tokenizer.bias"][N_NUM:])
    table = sd[f"{enc}tokenizer.cat_embedding.weight"]
    assert torch.equal(table[0], torch.zeros(DIM)) and torch.equal(table[4], torch.zeros(DIM))  # unseen rows
    assert torch.equal(table[5:9], ref["tokenizer.category_embeddings.1.weight"])  # codes k -> k + 1
    assert torch.equal(sd[f"{enc}blocks.1.qkv.weight"], ref["encoder.transformer.layers.1.self_attn.in_proj_weight"])
    assert torch.equal(sd[f"{enc}blocks.0.ff.3.bias"], ref["encoder.transformer.layers.0.linear2.bias"])
    assert torch.equal(sd[f"{enc}head.1.weight"], ref["encoder.layernorm2.weight"])
    assert torch.equal(sd["predictor.head.1.weight"], reference_predictor()["transformer.fc.weight"])
    assert not torch.equal(sd["context_encoder.reg_tokens"], sd[f"{enc}reg_tokens"])  # two encoders, not one
    assert any("epoch 3" in note for note in imported.notes)


def test_a_bare_encoder_state_dict_is_both_encoders_and_the_predictor_starts_fresh(tmp_path: Path):
    path = tmp_path / "encoder.pth"
    torch.save(reference_encoder(0), path)
    imported = read(path)
    assert imported.fresh == ("predictor.",)
    model, _ = _model(imported)
    fresh = load_strict(model, imported, path)
    assert fresh and all(k.startswith("predictor.") for k in fresh)


def test_unknown_keys_are_one_error_listing_them(tmp_path: Path):
    path = tmp_path / "bad.pth"
    ckpt = {"context_encoder": reference_encoder(0), "target_encoder": reference_encoder(0),
            "predictor": reference_predictor()}  # fmt: skip
    ckpt["target_encoder"]["feature_index_embedding.weight"] = torch.zeros(5, DIM)
    ckpt["predictor"]["extra.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"\(2\).*target_encoder.feature_index_embedding.weight.*predictor.extra"):
        read(path)
    torch.save({"target_encoder": reference_encoder(0), "args": torch.zeros(1)}, path)
    with pytest.raises(UserError, match=r"unknown keys \['args'\]"):
        read(path)
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="not a T-JEPA reference checkpoint"):
        read(path)


def test_a_shape_mismatch_with_the_model_is_one_error(tmp_path: Path):
    path = reference_checkpoint(tmp_path / "epoch_3.pth")
    imported = read(path)
    layer = {**imported.config["tjepa"], "expect_numeric": None, "expect_categories": None}
    model, _ = _model(ImportedWeights(config={"tjepa": layer}, state_dict={}), cats=[3, 5], n_num=2)
    with pytest.raises(UserError, match=r"shape mismatch.*num_weight: file \(3, 8\), model \(2, 8\)"):
        load_strict(model, imported, path)


def test_the_table_must_have_the_checkpoints_columns_and_categories(tmp_path: Path):
    imported = read(reference_checkpoint(tmp_path / "epoch_3.pth"))
    _model(imported)  # matches
    with pytest.raises(DataError, match=r"3 numeric columns, the table has 2"):
        _model(imported, n_num=2)
    with pytest.raises(DataError, match=r"'c1': 4 in the weights, 5 in the table"):
        _model(imported, cats=[3, 5])  # same total, a different column: the flat shape alone would not tell
    cfg = from_mapping(TJEPAConfig, {}, "tjepa")
    check_table(cfg, SimpleNamespace())  # nothing expected: nothing checked


def test_export_writes_what_the_reader_reads_and_refuses_other_architectures(tmp_path: Path):
    path = reference_checkpoint(tmp_path / "epoch_3.pth")
    imported = read(path)
    model, cfg = _model(imported)
    load_strict(model, imported, path)
    write(model, cfg, tmp_path / "export.pth")
    saved = torch.load(tmp_path / "export.pth", weights_only=True)
    original = torch.load(path, weights_only=True)
    for part in ("context_encoder", "target_encoder", "predictor"):
        assert set(saved[part]) == set(original[part])
        for key, value in saved[part].items():
            if "transformer_layers." not in key and key != "layer_norm.weight" and key != "layer_norm.bias":
                assert torch.allclose(value, original[part][key]), (part, key)
    again = read(tmp_path / "export.pth")
    assert all(torch.equal(again.state_dict[k], v) for k, v in imported.state_dict.items())
    default, default_cfg = _model(ImportedWeights(config={"tjepa": {"dim": DIM}}, state_dict={}))
    with pytest.raises(UserError, match="not the reference's architecture"):
        write(default, default_cfg, tmp_path / "no.pth")


def _table(path: Path, rows: int = 30, cities: tuple[str, ...] = ("east", "north", "south", "west")) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "age": rng.normal(40, 10, rows), "job": np.resize(["clerk", "farmer", "nurse"], rows),
        "hours": rng.normal(40, 5, rows), "city": np.resize(list(cities), rows), "income": rng.normal(5, 1, rows),
    })  # fmt: skip
    frame.to_csv(path, index=False)
    return path


def test_import_refuses_a_table_that_does_not_match_and_leaves_no_folder(tmp_path: Path):
    checkpoint = reference_checkpoint(tmp_path / "epoch_3.pth")
    table = _table(tmp_path / "five_cities.csv", cities=("a", "b", "c", "d", "e"))
    with pytest.raises(DataError, match="'city': 4 in the weights, 5 in the table"):
        import_weights(TJEPAPlugin(), checkpoint, table, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_import_then_embed(tmp_path: Path):
    checkpoint = reference_checkpoint(tmp_path / "epoch_3.pth")
    table = _table(tmp_path / "table.csv")
    run = tmp_path / "run"
    result = run_cli("import", "--plugin", "tjepa", "--from", str(checkpoint), "--data", str(table),
                     "--output", str(run), "--set", "tjepa.predictor_heads=2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = run_cli("embed", "--run", str(run), "--data", str(table), "--out", str(tmp_path / "emb.parquet"))
    assert result.returncode == 0, result.stderr
    embeddings = pd.read_parquet(tmp_path / "emb.parquet")
    assert len(embeddings) == 30
