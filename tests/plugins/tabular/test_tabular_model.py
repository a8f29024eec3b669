"""T-JEPA plugin: masking, objective, EMA teacher, embeddings, evaluation heads and the CLI round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from ssl_domains.config import from_mapping
from ssl_domains_tabular.evaluation import fit_head, write_example_table
from ssl_domains_tabular.masking import context_and_targets, sample_set_sizes
from ssl_domains_tabular.model import TJEPAModel
from ssl_domains_tabular.plugin import TJEPAConfig, TJEPAPlugin
from tests.conftest import run_cli


def _model(embedding: str = "flatten", **sizes) -> TJEPAModel:
    kw = dict(dim=16, depth=1, heads=2, ff_dim=32, dropout=0.0, num_reg_tokens=2, predictor_dim=8,
              predictor_depth=1, predictor_heads=2, ema=(0.996, 1.0), embedding=embedding)  # fmt: skip
    kw.update(sizes)
    return TJEPAModel(3, [4, 5], **kw)


def _batch(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "numeric": torch.randn(n, 3, generator=gen),
        "categorical": torch.stack(
            [torch.randint(0, 4, (n,), generator=gen), torch.randint(0, 5, (n,), generator=gen)], 1
        ),
        "id": torch.arange(n),
    }


def test_set_sizes_follow_the_share_ranges_and_leave_room_for_targets():
    gen = torch.Generator().manual_seed(0)
    sizes = [sample_set_sizes(14, (0.136, 0.368), (0.156, 0.622), gen) for _ in range(2000)]
    contexts, targets = zip(*sizes, strict=True)
    assert set(contexts) == {2, 3, 4, 5} and min(targets) == 2 and max(targets) == 9
    assert all(c + t <= 14 for c, t in sizes)
    assert sample_set_sizes(2, (0.9, 0.9), (0.9, 0.9), gen) == (1, 1)  # capped: one context, one target
    with pytest.raises(ValueError, match="at least two features"):
        sample_set_sizes(1, (0.1, 0.2), (0.1, 0.2), gen)


def test_targets_are_disjoint_from_the_context_and_every_feature_is_drawn():
    torch.manual_seed(0)
    context, targets = context_and_targets(256, 14, 4, 6, 4, "cpu")
    assert context.shape == (256, 4) and targets.shape == (256, 4, 6)
    overlap = (targets.unsqueeze(-1) == context[:, None, None, :]).any(-1)
    assert not bool(overlap.any())
    assert all(len(set(row.tolist())) == 4 for row in context)
    assert all(len(set(t.tolist())) == 6 for t in targets.reshape(-1, 6))
    # unlike the reference (its index 0 is the [REG] token), the last feature is drawn as often as the others
    counts = torch.bincount(targets.flatten(), minlength=14).float()
    assert counts.min() / counts.max() > 0.8 and torch.bincount(context.flatten(), minlength=14).min() > 0


def test_loss_is_the_mse_to_the_target_encoder_tokens_and_falls_when_overfitting():
    torch.manual_seed(0)
    model, batch = _model(), _batch()
    objective = TJEPAPlugin().objective(from_mapping(TJEPAConfig, {}, "tjepa"))
    torch.manual_seed(1)
    predictions, targets, features = objective.predict(model, batch)
    torch.manual_seed(1)
    loss = objective(model, batch)["loss"]
    assert torch.allclose(loss, ((predictions - targets) ** 2).mean())
    full = model.target_encoder(batch["numeric"], batch["categorical"])
    assert torch.allclose(targets[3, 1, 0], full[3, 2 + features[3, 1, 0]])  # token after the 2 [REG] tokens
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for step in range(150):
        torch.manual_seed(step)
        out = objective(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = float(out["loss"].detach()) if first is None else first
    assert float(out["loss"].detach()) < 0.3 * first


def test_the_target_encoder_is_an_ema_with_a_linear_momentum_ramp():
    model = _model()
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    model.target_encoder.update(model.context_encoder, progress=1.0)  # momentum 1.0: frozen
    assert all(torch.equal(a, b) for a, b in zip(before, model.target_encoder.parameters(), strict=True))
    assert model.target_encoder.momentum(0.5) == pytest.approx(0.998)
    model.target_encoder.update(model.context_encoder, progress=0.0)  # momentum 0.996
    moved = next(iter(model.target_encoder.parameters())) - before[0]
    assert torch.allclose(moved, torch.full_like(moved, 0.004), atol=1e-6)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


@pytest.mark.parametrize(("embedding", "width"), [("flatten", (2 + 5) * 16), ("reg", 2 * 16), ("mean", 16)])
def test_embeddings_have_the_declared_width_and_do_not_depend_on_the_batch(embedding: str, width: int):
    model = _model(embedding).eval()
    batch = _batch(10)
    emb = model.embed(batch)
    assert emb.shape == (10, width) == (10, model.embed_dim)
    half = {k: v[:5] for k, v in batch.items()}
    assert torch.allclose(model.embed(half), emb[:5], atol=1e-5)


def test_mlp_head_learns_a_nonlinear_rule_and_reports_test_accuracy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 2)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)  # XOR-like: no linear head can do it
    split = np.repeat([SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST], [800, 200, 200])
    _, mlp = fit_head("mlp", x, y, split, "classification", seed=0, epochs=60, patience=10)
    _, linear = fit_head("linear", x, y, split, "classification", seed=0, epochs=60, patience=10)
    assert mlp > 0.9 and linear < 0.65
    x = rng.normal(size=(5000, 2)).astype(np.float32)
    target = (x[:, 0] * 3.0 + 1.0).astype(np.float32)
    split = np.repeat([SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST], [4000, 500, 500])
    val_rmse, rmse = fit_head("linear", x, target, split, "regression", seed=0, epochs=100, patience=10)
    assert 0.0 < val_rmse < 0.3 and 0.0 < rmse < 0.3  # in the target's units: std 3, so R² > 0.99


@pytest.mark.slow
def test_cli_train_embed_new_rows_and_evaluate(tmp_path: Path):
    data = write_example_table(tmp_path / "data", rows=600)
    run = tmp_path / "run"
    sets = ["tjepa.target=label", "tjepa.depth=1", "tjepa.predictor_depth=1", "tjepa.eval_seeds=1",
            "tjepa.head_epochs=5", "trainer.max_epochs=2"]  # fmt: skip
    flags = [a for kv in sets for a in ("--set", kv)]
    result = run_cli("train", "--plugin", "tjepa", "--data", str(data), "--output", str(run), *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "figures" / "feature_prediction_error.png").is_file()
    new = pd.read_csv(data / "test.csv").drop(columns="label").head(20)
    new.loc[0, "job"] = "astronaut"  # unseen: mapped to the unknown index, counted in the log
    new.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "emb.parquet"
    result = run_cli("embed", "--run", str(run), "--data", str(tmp_path / "new.csv"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unseen in training" in result.stderr and "'job': 1" in result.stderr
    table = pd.read_parquet(out)
    assert table["id"].tolist() == list(range(20))  # row numbers of new.csv
    assert table["row"].tolist() == list(range(20)) and set(table["file"]) == {str(tmp_path / "new.csv")}
    result = run_cli("evaluate", "--run", str(run), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["metric"] == "accuracy" and 0.5 < metrics["gbdt_mean"] <= 1.0 and "mlp_emb_mean" in metrics


# ---- the reference's choices (switches for the equivalence check, benchmarks/_equiv_tjepa.py) ----------------


def _keys(model: TJEPAModel) -> set[str]:
    return set(model.state_dict())


def test_switches_change_no_state_dict_key_of_the_default_model():
    default = _keys(_model())
    assert _keys(_model(norm="post", activation="relu", predictor_positions="halves", predictor_ff_dim=12)) == default
    embeddings = {"context_encoder.tokenizer.feature_embedding", "target_encoder.module.tokenizer.feature_embedding"}
    assert _keys(_model(positions="sincos")) == default - embeddings
    head = {f"predictor.head.{i}.{leaf}" for i in range(3) for leaf in ("weight", "bias")}
    assert _keys(_model(predictor_head="encoder_head")) == default | head


def test_post_norm_relu_and_positions_change_the_outputs_with_the_same_weights():
    torch.manual_seed(0)
    base = _model(positions="sincos").eval()
    batch = _batch(8)
    ref = base.embed(batch)
    for switch in ({"norm": "post"}, {"activation": "relu"}):
        other = _model(positions="sincos", **switch).eval()
        other.load_state_dict(base.state_dict())
        assert not torch.allclose(other.embed(batch), ref, atol=1e-4), switch
    relu = _model(activation="relu")
    assert isinstance(relu.context_encoder.blocks[0].ff[1], torch.nn.ReLU)
    assert isinstance(relu.predictor.blocks[0].ff[1], torch.nn.ReLU)
    # sincos: the reference's table (base 100, sin/cos interleaved) is added, [REG] rows first
    table = base.context_encoder.positions
    assert table.shape == (2 + 5, 16)
    assert torch.allclose(table[3, :4], torch.tensor([np.sin(3.0), np.cos(3.0), np.sin(3 * 100 ** (-2 / 16)),
                                                      np.cos(3 * 100 ** (-2 / 16))], dtype=torch.float32))  # fmt: skip
    halves = _model(predictor_positions="halves").predictor.positions
    omega = 1.0 / 10000 ** (np.arange(4) / 4)
    assert torch.allclose(halves[2], torch.tensor(np.concatenate([np.sin(2 * omega), np.cos(2 * omega)]),
                                                  dtype=torch.float32))  # fmt: skip


def test_reference_mask_indexing_uses_the_reg_token_and_never_the_last_features():
    torch.manual_seed(0)
    model, batch = _model(), _batch(64)
    cfg = from_mapping(TJEPAConfig, {"mask_indexing": "reference", "num_reg_tokens": 2}, "tjepa")
    objective = TJEPAPlugin().objective(cfg)
    seen: list[torch.Tensor] = []
    model.context_encoder.register_forward_pre_hook(
        lambda _m, _args, kwargs: seen.append(kwargs["tokens"]), with_kwargs=True
    )
    targets = []
    for _ in range(40):
        predictions, target_tokens, features = objective.predict(model, batch)
        targets.append(features)
        assert predictions.shape == target_tokens.shape
    context = torch.cat([s.flatten() for s in seen])
    target = torch.cat([t.flatten() for t in targets]) + model.num_reg_tokens  # back to token indices
    for drawn in (context, target):
        assert int(drawn.min()) == 0  # index 0 is the first [REG] token, drawn as any feature
        assert int(drawn.max()) == model.num_features - 1  # tokens R + D - R .. R + D - 1: the last 2 features, never
    # the context sequence holds only the drawn tokens: no [REG] prefix
    assert seen[0].shape[1] < model.num_features


def test_reference_set_sizes_follow_the_collators_rule():
    from ssl_domains_tabular.masking import reference_set_sizes

    gen = torch.Generator().manual_seed(0)
    sizes = [reference_set_sizes(14, (0.136, 0.368), (0.156, 0.622), gen) for _ in range(2000)]
    assert {c for c, _ in sizes} == {2, 3, 4, 5} and {t for _, t in sizes} == set(range(2, 10))
    assert all(c + t <= 14 for c, t in sizes)


def test_reference_switches_with_an_odd_width_are_a_config_error():
    from ssl_domains import ConfigError

    with pytest.raises(ConfigError, match=r"even tjepa\.dim"):
        from_mapping(TJEPAConfig, {"positions": "sincos", "dim": 15, "heads": 1}, "tjepa")
    with pytest.raises(ConfigError, match="even predictor_dim"):
        from_mapping(TJEPAConfig, {"predictor_positions": "halves", "predictor_dim": 7, "predictor_heads": 1}, "tjepa")


def test_regression_metrics_are_also_given_in_units_of_the_target_std():
    from types import SimpleNamespace

    from ssl_domains_tabular.evaluation import compare_heads

    rng = np.random.default_rng(0)
    n = 300
    numeric = rng.normal(size=(n, 2)).astype(np.float32)
    target = (numeric[:, 0] * 1000.0 + 5000.0 + rng.normal(0, 100, n)).astype(np.float32)
    split = np.repeat([SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST], [200, 50, 50])
    dm = SimpleNamespace(numeric=torch.as_tensor(numeric), categorical=torch.zeros(n, 0, dtype=torch.long),
                         target=torch.as_tensor(target), split=torch.as_tensor(split), task="regression",
                         cardinalities=[])  # fmt: skip
    metrics = compare_heads(numeric, dm, seeds=1, epochs=3, patience=2)
    assert metrics["target_std"] == pytest.approx(float(target[:200].std()))
    assert metrics["linear_raw_mean_std_units"] == pytest.approx(metrics["linear_raw_mean"] / metrics["target_std"])


def test_a_streamed_table_trains_embeds_and_evaluates_through_the_cli(tmp_path: Path):
    data = write_example_table(tmp_path / "data", rows=600)
    run = tmp_path / "run"
    sets = ["tjepa.target=label", "tjepa.depth=1", "tjepa.predictor_depth=1", "tjepa.eval_seeds=1",
            "tjepa.head_epochs=3", "trainer.max_epochs=1", "tjepa.storage=stream"]  # fmt: skip
    flags = [a for kv in sets for a in ("--set", kv)]
    result = run_cli("train", "--plugin", "tjepa", "--data", str(data), "--output", str(run), *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    new = pd.read_csv(data / "test.csv").drop(columns="label").head(30)
    new.to_parquet(tmp_path / "new.parquet", index=False)
    out = tmp_path / "emb.parquet"
    result = run_cli("embed", "--run", str(run), "--data", str(tmp_path / "new.parquet"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_parquet(out)
    assert table["id"].tolist() == table["row"].tolist() == list(range(30))
    result = run_cli("evaluate", "--run", str(run), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gbdt_mean" in json.loads(result.stdout.strip().splitlines()[-1])
