"""Downstream protocol: the same heads on T-JEPA embeddings and on raw features, and gradient boosting.

Honest protocol (the reference selects on its test set, see docs/plugins/tjepa.md): heads train on the training
split, early-stop on the validation split carved from the training table, and report on the official test split.
Each head runs with ``eval_seeds`` seeds; results are mean ± std over them.

- MLP head: 2 × 256 ReLU layers, AdamW (lr 1e-3), batch 256, early stopping on validation; dropout 0.1 or 0.3,
  whichever scores better on validation (chosen per input and seed, so embeddings and raw features get the
  same search).
- Linear head: logistic regression (or linear regression) trained the same way.
- Raw features: one-hot categoricals (the unknown index included) and the numerics as the plugin scales them.
- Gradient boosting: scikit-learn ``HistGradientBoosting`` with native categorical support.

Classification reports accuracy; regression reports RMSE in the target's units, and the same RMSE divided by
the standard deviation of the training target (``*_std_units``): the paper's California figures (RMSE 0.468 for
MLP + T-JEPA) are in those units, since the reference standardises the target before training
(``src/torch_dataset.py:132-135``; docs/plugins/tjepa.md, "Regression").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from ssl_domains.evaluation import predict_embeddings

if TYPE_CHECKING:
    from .data import TableDataModule
    from .model import TJEPAModel
    from .plugin import TJEPAConfig

HEAD_WIDTH, HEAD_LR, HEAD_BATCH = 256, 1e-3, 256
MLP_DROPOUTS = (0.1, 0.3)


def raw_features(numeric: np.ndarray, categorical: np.ndarray, cardinalities: list[int]) -> np.ndarray:
    """Scaled numerics next to one-hot categoricals (one column per vocabulary entry and the unknown index)."""
    blocks = [numeric.astype(np.float32)]
    for j, size in enumerate(cardinalities):
        blocks.append(np.eye(size, dtype=np.float32)[categorical[:, j]])
    return np.concatenate(blocks, axis=1)


def _head(kind: str, in_dim: int, out_dim: int, dropout: float) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, HEAD_WIDTH), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(HEAD_WIDTH, HEAD_WIDTH), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(HEAD_WIDTH, out_dim),
    )  # fmt: skip


def fit_head(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    task: str,
    seed: int,
    epochs: int,
    patience: int,
    dropout: float = MLP_DROPOUTS[0],
) -> tuple[float, float]:
    """Train a head on the train split, keep the epoch best on validation; return its (validation, test) metric.

    Inputs are standardised with training-split statistics; regression targets too (RMSE is reported in the
    original units).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train, val, test = (split == SPLIT_TRAIN), (split == SPLIT_VAL), (split == SPLIT_TEST)
    mean, std = x[train].mean(0), x[train].std(0)
    xs = torch.as_tensor((x - mean) / np.where(std > 1e-8, std, 1.0), dtype=torch.float32)
    regression = task == "regression"
    if regression:
        y_mean, y_std = float(y[train].mean()), float(y[train].std()) or 1.0
        ys = torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32)
        out_dim = 1
    else:
        ys = torch.as_tensor(y, dtype=torch.long)
        out_dim = int(y.max()) + 1
    model = _head(kind, xs.shape[1], out_dim, dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=HEAD_LR, weight_decay=1e-5)
    train_idx = torch.as_tensor(np.flatnonzero(train))

    def score(mask: np.ndarray) -> float:  # higher is better: accuracy, or minus RMSE in target units
        model.eval()
        with torch.no_grad():
            out = model(xs[mask])
        model.train()
        if regression:
            return -float(((out.squeeze(1) - ys[mask]) ** 2).mean().sqrt()) * y_std
        return float((out.argmax(1) == ys[mask]).float().mean())

    best, best_state, waited = -np.inf, copy.deepcopy(model.state_dict()), 0
    for _ in range(epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(order), HEAD_BATCH):
            rows = order[start : start + HEAD_BATCH]
            out = model(xs[rows])
            loss = F.mse_loss(out.squeeze(1), ys[rows]) if regression else F.cross_entropy(out, ys[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        current = score(val)
        if current > best:
            best, best_state, waited = current, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best_state)
    sign = -1.0 if regression else 1.0
    return sign * best, sign * score(test)


def fit_gbdt(
    numeric: np.ndarray, categorical: np.ndarray, cardinalities: list[int], y: np.ndarray, split: np.ndarray,
    task: str, seed: int,
) -> float:  # fmt: skip
    """HistGradientBoosting on the train split (its own early stopping), test metric."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    x = np.concatenate([numeric, categorical.astype(np.float32)], axis=1)
    native = [False] * numeric.shape[1] + [size <= 255 for size in cardinalities]  # HGB's category limit
    kind = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    model = kind(categorical_features=np.asarray(native, dtype=bool), random_state=seed)
    train, test = split == SPLIT_TRAIN, split == SPLIT_TEST
    model.fit(x[train], y[train])
    pred = model.predict(x[test])
    if task == "regression":
        return float(np.sqrt(np.mean((pred - y[test]) ** 2)))
    return float((pred == y[test]).mean())


def fit_selected_head(
    kind: str, x: np.ndarray, y: np.ndarray, split: np.ndarray, task: str, seed: int, epochs: int, patience: int
) -> tuple[float, float]:
    """:func:`fit_head`; for the MLP, the dropout in ``MLP_DROPOUTS`` that scores best on validation."""
    dropouts = MLP_DROPOUTS if kind == "mlp" else (0.0,)
    results = [fit_head(kind, x, y, split, task, seed, epochs, patience, d) for d in dropouts]
    return max(results, key=lambda r: -r[0] if task == "regression" else r[0])


def table_embeddings(model: TJEPAModel, datamodule: TableDataModule, device: torch.device | str) -> np.ndarray:
    """``model.embed`` of every row, in the order of the datamodule's tensors."""
    emb = predict_embeddings(model, datamodule, device)
    vectors = np.empty_like(emb.vectors)
    vectors[datamodule.positions(emb.ids)] = emb.vectors
    return vectors


def compare_heads(embeddings: np.ndarray, datamodule: Any, seeds: int, epochs: int, patience: int) -> dict[str, Any]:
    """Every head on embeddings and on raw features, plus gradient boosting, over ``seeds`` seeds."""
    numeric, categorical = datamodule.numeric.numpy(), datamodule.categorical.numpy()
    y, split, task = datamodule.target.numpy(), datamodule.split.numpy(), datamodule.task
    raw = raw_features(numeric, categorical, datamodule.cardinalities)
    runs: dict[str, list[float]] = {k: [] for k in ("mlp_emb", "mlp_raw", "linear_emb", "linear_raw", "gbdt")}
    val_runs: dict[str, list[float]] = {k: [] for k in runs if k != "gbdt"}
    for seed in range(seeds):
        for head in ("mlp", "linear"):
            for source, x in (("emb", embeddings), ("raw", raw)):
                val, test = fit_selected_head(head, x, y, split, task, seed, epochs, patience)
                val_runs[f"{head}_{source}"].append(val)
                runs[f"{head}_{source}"].append(test)
        runs["gbdt"].append(fit_gbdt(numeric, categorical, datamodule.cardinalities, y, split, task, seed))
    metrics: dict[str, Any] = {"metric": "rmse" if task == "regression" else "accuracy", "seeds": seeds}
    target_std = float(y[split == SPLIT_TRAIN].std()) if task == "regression" else 1.0
    if task == "regression":
        metrics["target_std"] = target_std  # of the training split: the unit of the *_std_units figures
    for name, values in runs.items():
        metrics[f"{name}_mean"] = float(np.mean(values))
        metrics[f"{name}_std"] = float(np.std(values))
        metrics[f"{name}_runs"] = values
        if name in val_runs:
            metrics[f"{name}_val_mean"] = float(np.mean(val_runs[name]))
        if task == "regression" and target_std > 0:
            metrics[f"{name}_mean_std_units"] = float(np.mean(values)) / target_std
    return metrics


def evaluate_tjepa(
    model: TJEPAModel, datamodule: TableDataModule, cfg: TJEPAConfig, device: torch.device | str
) -> dict[str, Any] | None:
    """The comparison above, or None (the core's generic probe) without a target or a val/test split."""
    if datamodule.target is None:
        return None
    present = set(datamodule.split.unique().tolist())
    if not {SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST} <= present:
        return None
    embeddings = table_embeddings(model, datamodule, device)
    return compare_heads(embeddings, datamodule, cfg.eval_seeds, cfg.head_epochs, cfg.head_patience)


def write_example_table(root: Path, rows: int = 800, seed: int = 0) -> Path:
    """A small mixed-type table (train.csv, test.csv) whose label needs a numeric-categorical interaction."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows)
    hours = rng.normal(40, 10, rows).round(1)
    income = rng.lognormal(10, 1, rows).round(0)
    job = rng.choice(["clerk", "engineer", "farmer", "nurse", "teacher"], rows)
    city = rng.choice(["north", "south", "east"], rows)
    score = (age - 45) / 15 + (job == "engineer") * 1.5 - (city == "south") + np.log(income) - 10
    label = np.where(score + rng.normal(0, 0.5, rows) > 0, ">50K", "<=50K")
    frame = pd.DataFrame({"age": age, "hours": hours, "income": income, "job": job, "city": city, "label": label})
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cut = rows * 3 // 4
    frame.iloc[:cut].to_csv(root / "train.csv", index=False)
    frame.iloc[cut:].to_csv(root / "test.csv", index=False)
    return root
