"""GraphMAE science: masking shares, the SCE loss, layers equal to PyG's, the probe protocols, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.nn import GATConv, GINConv

from ssl_domains_graph.evaluation import graph_svm_cv, node_linear_probe
from ssl_domains_graph.masking import drop_edges, mask_node_features
from ssl_domains_graph.model import MLP, GATLayer, GINLayer
from ssl_domains_graph.objective import sce_loss
from tests.conftest import run_cli, train_cli


def test_masking_shares_token_and_replacement():
    torch.manual_seed(0)
    x = torch.rand(1000, 8) + 1.0  # strictly positive rows, so a token row (zeros) is recognisable
    token = torch.zeros(1, 8)
    out, mask, keep = mask_node_features(x, token, mask_rate=0.5, replace_rate=0.1)
    assert len(mask) == 500 and len(keep) == 500
    assert sorted(torch.cat([mask, keep]).tolist()) == list(range(1000))
    assert torch.equal(out[keep], x[keep])
    is_token = (out[mask] == 0).all(1)
    assert int(is_token.sum()) == 450  # 500 - int(0.1 * 500)
    noise = out[mask][~is_token]
    # replaced rows are copies of (random) original rows
    assert all((x == row).all(1).any() for row in noise)
    torch.manual_seed(5)
    first = mask_node_features(x, token, 0.5, 0.1)[0]
    torch.manual_seed(5)
    assert torch.equal(first, mask_node_features(x, token, 0.5, 0.1)[0])
    assert not torch.equal(first, mask_node_features(x, token, 0.5, 0.1)[0])


def test_mask_token_receives_the_gradient():
    token = torch.zeros(1, 4, requires_grad=True)
    out, mask, _ = mask_node_features(torch.rand(10, 4), token, 0.5, 0.0)
    out[mask].sum().backward()
    assert torch.equal(token.grad, torch.full((1, 4), 5.0))


def test_drop_edges_keeps_self_loops_and_drops_the_share():
    torch.manual_seed(0)
    ei = torch.cat([torch.randint(0, 100, (2, 20000)), torch.arange(100).repeat(2, 1)], dim=1)
    ei = ei[:, ei[0] != ei[1]]
    ei = torch.cat([ei, torch.arange(100).repeat(2, 1)], dim=1)
    w = drop_edges(ei, 0.5)
    loops = ei[0] == ei[1]
    assert (w[loops] == 1).all()
    assert abs(float(w[~loops].mean()) - 0.5) < 0.02


@pytest.mark.parametrize(("cos", "alpha", "expected"), [(1.0, 3, 0.0), (0.0, 3, 1.0), (-1.0, 2, 4.0), (0.5, 3, 0.125)])
def test_sce_loss_known_values(cos, alpha, expected):
    x = torch.tensor([[1.0, 0.0]])
    angle = np.arccos(cos)
    x_hat = torch.tensor([[np.cos(angle), np.sin(angle)]], dtype=torch.float32) * 7.0  # scale must not matter
    assert float(sce_loss(x_hat, x, alpha)) == pytest.approx(expected, abs=1e-6)


def test_sce_loss_is_float32_under_bf16():
    a, b = torch.randn(16, 8).bfloat16(), torch.randn(16, 8).bfloat16()
    assert sce_loss(a, b, 3).dtype == torch.float32


@pytest.mark.parametrize(("in_dim", "out_dim", "heads"), [(12, 4, 3), (24, 4, 2)])  # both aggregation orders
def test_stacked_gat_layers_train_under_bf16_autocast(in_dim, out_dim, heads):
    # Under autocast a layer can get bf16 features (the decoder's input is the bias-free encoder_to_decoder
    # Linear's output) with float32 attention weights (a softmax): the neighbour sums must accept both.
    torch.manual_seed(0)
    n = 40
    ei = torch.cat([torch.randint(0, n, (2, 160)), torch.arange(n).repeat(2, 1)], 1)
    first = GATLayer(in_dim, out_dim, heads, concat=True)
    second = GATLayer(out_dim * heads, out_dim, heads, concat=False)
    x = torch.randn(n, in_dim).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = second(first(x, ei), ei)
    eager = second(first(x.float(), ei), ei)
    assert out.shape == (n, out_dim) and torch.isfinite(out).all()
    assert torch.allclose(out.float(), eager, atol=0.05, rtol=0.05)
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in first.parameters() if p.requires_grad)


@pytest.mark.parametrize(("in_dim", "out_dim", "heads"), [(12, 4, 3), (5, 16, 1), (6, 9, 2)])
def test_gat_layer_equals_pyg_gatconv(in_dim, out_dim, heads):
    torch.manual_seed(0)
    n = 30
    ei = torch.randint(0, n, (2, 120))
    ei = torch.cat([ei, torch.arange(n).repeat(2, 1)], 1)
    x = torch.randn(n, in_dim)
    ours = GATLayer(in_dim, out_dim, heads, concat=True).eval()
    theirs = GATConv(in_dim, out_dim, heads, concat=True, add_self_loops=False).eval()
    with torch.no_grad():
        theirs.lin.weight.copy_(ours.lin.weight)
        theirs.att_src.copy_(ours.att_src)
        theirs.att_dst.copy_(ours.att_dst)
        theirs.bias.copy_(torch.randn_like(theirs.bias))
        ours.bias.copy_(theirs.bias)
    expected = theirs(x, ei)
    assert torch.allclose(ours(x, ei), expected, atol=1e-5)  # in_dim < out_dim takes the aggregate-first path
    rows = torch.tensor([3, 0, 17])
    assert torch.allclose(ours(x, ei, rows=rows), expected[rows], atol=1e-5)
    # a dropped edge is the same as an absent one
    keep = torch.ones(ei.shape[1])
    keep[:40] = 0
    assert torch.allclose(ours(x, ei, keep), theirs(x, ei[:, 40:]), atol=1e-5)


def test_gin_layer_equals_pyg_ginconv():
    torch.manual_seed(0)
    mlp = MLP(6, 10, 4, "relu", None)
    ei = torch.randint(0, 20, (2, 60))
    x = torch.randn(20, 6)
    ours = GINLayer(mlp, apply=False)
    theirs = GINConv(mlp, eps=0.0, train_eps=False)
    assert torch.allclose(ours(x, ei), theirs(x, ei), atol=1e-6)


def test_node_probe_selects_on_validation_and_reports_test():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    emb = np.eye(3)[y] * 4 + rng.normal(0, 1, (300, 3))
    split = np.repeat([0, 1, 2], 100)
    result = node_linear_probe(emb, y, split, lr=0.05, weight_decay=0.0, epochs=100)
    assert result["test_acc"] > 0.9 and 0 <= result["best_epoch"] < 100
    noise = node_linear_probe(rng.normal(size=(300, 3)), y, split, lr=0.05, weight_decay=0.0, epochs=100)
    assert noise["test_acc"] < 0.5


def test_graph_svm_protocol_is_deterministic_and_informative():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    emb = y[:, None] * 3.0 + rng.normal(0, 1, (80, 4))
    first, second = graph_svm_cv(emb, y), graph_svm_cv(emb, y)
    assert first == second and first["svm_acc"] > 0.9


def test_cora_through_the_cli_writes_figure_embeddings_and_metrics(cora: Path, tmp_path: Path):
    run = tmp_path / "run"
    sets = ["--set", "graphmae.num_hidden=64", "--set", "graphmae.max_epoch_f=50"]
    train_cli("graphmae", cora, run, "--config", "cora", "--max-epochs", "3", *sets)
    assert (run / "figures" / "node_embeddings_tsne.png").stat().st_size > 10_000
    result = run_cli("embed", "--run", str(run), "--data", str(cora), "--out", str(tmp_path / "e.npy"))
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "e.npy").shape == (2708, 64)
    result = run_cli("evaluate", "--run", str(run), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"rankme", "test_acc", "val_acc"} <= set(metrics)
    assert metrics["test_acc"] > 0.3  # 7 classes; even 3 epochs beat chance


def test_mutag_through_the_cli_with_bf16(mutag: Path, tmp_path: Path):
    run = tmp_path / "run"
    train_cli("graphmae", mutag, run, "--config", "mutag", "--max-epochs", "2", "--precision", "bf16-mixed")
    metrics = json.loads(run_cli("evaluate", "--run", str(run), "--json").stdout.strip().splitlines()[-1])
    assert 0.5 < metrics["svm_acc"] <= 1.0 and metrics["num_items"] == 188


def test_neighbor_mode_trains_and_embeds_every_node(cora: Path, tmp_path: Path):
    run = tmp_path / "run"
    small = ["node_batching=neighbor", "batch_size=1024", "num_hidden=32", "num_neighbors=[5, 5, 5]"]
    train_cli("graphmae", cora, run, "--max-epochs", "1", *[a for s in small for a in ("--set", f"graphmae.{s}")])
    assert run_cli("embed", "--run", str(run), "--data", str(cora), "--out", str(tmp_path / "e.npy")).returncode == 0
    assert np.array_equal(np.load(tmp_path / "e.ids.npy"), np.arange(2708))
