"""T-JEPA plugin data: reading, schema inference, encoders fitted on train only, splits, and bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_domains import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, DataError
from ssl_domains.config import from_mapping
from ssl_domains_tabular.data import TableDataModule
from ssl_domains_tabular.evaluation import raw_features, write_example_table
from ssl_domains_tabular.plugin import TJEPAConfig


def _cfg(**overrides) -> TJEPAConfig:
    return from_mapping(TJEPAConfig, {"target": "label", **overrides}, "tjepa")


def _module(path: Path, **overrides) -> TableDataModule:
    dm = TableDataModule(path, _cfg(**overrides))
    dm.setup("fit")
    return dm


def test_schema_splits_and_batches(tmp_path: Path):
    data = write_example_table(tmp_path / "t", rows=800)
    dm = _module(data)
    assert dm.fitted["numeric"] == ["age", "hours", "income"] and dm.fitted["categorical"] == ["job", "city"]
    assert "label" not in dm.feature_names and dm.fitted["classes"] == ["<=50K", ">50K"]
    counts = {s: int((dm.split == s).sum()) for s in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST)}
    assert counts == {SPLIT_TRAIN: 480, SPLIT_VAL: 120, SPLIT_TEST: 200}  # test.csv is the test split
    batch = next(iter(dm.train_dataloader()))
    assert batch["numeric"].shape == (dm.cfg.batch_size if len(dm.train_rows) > 512 else 480, 3)
    assert batch["categorical"].dtype.is_floating_point is False and int(batch["categorical"].min()) >= 1
    assert set(batch["split"].tolist()) == {SPLIT_TRAIN}
    # the split is a function of split_seed, not of the pretraining seed
    again = _module(data)
    assert np.array_equal(again.split.numpy(), dm.split.numpy())


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_a_worker_hands_on_each_batch_as_one_segment_equal_to_the_gathered_rows(tmp_path: Path, storage: str):
    """``__getitems__`` gathers a batch into one shared buffer in the worker; its values and dtypes are those of
    indexing the encoded tensors row by row."""
    data = write_example_table(tmp_path / "t", rows=400)
    dm = _module(data, storage=storage, batch_size=64, num_workers=1)
    batches = list(dm.train_dataloader())
    assert sum(len(b["id"]) for b in batches) == len(dm.train_rows) // 64 * 64  # the last partial batch dropped
    for batch in batches:
        assert len({t.untyped_storage().data_ptr() for t in batch.values()}) == 1 and batch["id"].is_shared()
        at = torch.from_numpy(dm.positions(batch["id"].numpy()))
        assert torch.equal(batch["numeric"], dm.numeric[at]) and torch.equal(batch["categorical"], dm.categorical[at])
        assert torch.equal(batch["label"], dm.label[at]) and batch["split"].dtype == torch.long
        assert set(batch["split"].tolist()) == {SPLIT_TRAIN}


def test_scalers_are_fitted_on_the_training_split_only(tmp_path: Path):
    data = write_example_table(tmp_path / "t", rows=800)
    for scaling in ("standard", "quantile", "minmax"):
        dm = _module(data, numeric_scaling=scaling)
        train = dm.numeric[dm.split == SPLIT_TRAIN].double()
        if scaling == "standard":
            assert train.mean(0).abs().max() < 1e-6 and (train.std(0, unbiased=False) - 1).abs().max() < 1e-4
        elif scaling == "minmax":
            assert train.min(0).values.abs().max() < 1e-6 and (train.max(0).values - 1).abs().max() < 1e-6
        else:  # quantile-normal: training values map to ~N(0, 1), order kept
            assert train.mean(0).abs().max() < 0.05 and (train.std(0) - 1).abs().max() < 0.1
            whole = _module(data, numeric_scaling=scaling, val_fraction=0.0)  # rows in file order
            raw = pd.read_csv(data / "train.csv")["income"].to_numpy()
            assert np.all(np.diff(whole.numeric[: len(raw), 2].numpy()[np.argsort(raw)]) >= 0)


def test_single_file_holds_out_a_stratified_test_share(tmp_path: Path):
    data = write_example_table(tmp_path / "t", rows=1000)
    frame = pd.concat([pd.read_csv(data / "train.csv"), pd.read_csv(data / "test.csv")])
    frame.to_parquet(tmp_path / "all.parquet", index=False)
    dm = _module(tmp_path / "all.parquet")
    assert int((dm.split == SPLIT_TEST).sum()) == 200
    positive = dm.label.float()
    assert abs(float(positive[dm.split == SPLIT_TEST].mean()) - float(positive.mean())) < 0.01


def test_unseen_category_maps_to_the_unknown_index_and_is_counted(tmp_path: Path, caplog):
    data = write_example_table(tmp_path / "t", rows=400)
    test = pd.read_csv(data / "test.csv")
    test.loc[:4, "job"] = "astronaut"
    test.to_csv(data / "test.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="ssl_domains_tabular"):
        dm = _module(data)
    job = dm.feature_names.index("job") - len(dm.fitted["numeric"])
    test_codes = dm.categorical[dm.split == SPLIT_TEST, job]
    assert int((test_codes == 0).sum()) == 5 and dm.unknown_counts[-1] == {"job": 5}
    assert "test.csv" in caplog.text and "'job': 5" in caplog.text
    one_hot = raw_features(dm.numeric.numpy(), dm.categorical.numpy(), dm.cardinalities)
    assert one_hot.shape[1] == 3 + sum(dm.cardinalities) and np.allclose(one_hot[:, 3:].sum(1), 2)


def test_missing_values_are_an_error_by_default_and_imputed_on_request(tmp_path: Path):
    data = write_example_table(tmp_path / "t", rows=400)
    train = pd.read_csv(data / "train.csv")
    train.loc[:6, "hours"] = np.nan
    train.loc[:2, "city"] = None
    train.to_csv(data / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train\.csv.*'hours' \(7 rows\).*'city' \(3 rows\).*missing=impute"):
        _module(data)
    dm = _module(data, missing="impute")
    assert "<missing>" in dm.fitted["vocab"]["city"] and bool(dm.numeric.isfinite().all())


def test_na_markers_are_read_as_missing(tmp_path: Path):
    (tmp_path / "t.csv").write_text("a,b,label\n1,x,0\n?,y,1\n3,x,0\n4,y,1\n5,x,0\n6,y,1\n")
    with pytest.raises(DataError, match=r"'a' \(1 rows\)"):
        _module(tmp_path / "t.csv", na_values=["?"], val_fraction=0.0, test_fraction=0.0)


def test_wrong_target_column_names_the_file_and_the_columns(tmp_path: Path):
    data = write_example_table(tmp_path / "t", rows=200)
    with pytest.raises(DataError, match=r"train\.csv has no target column 'salary'.*'age'"):
        _module(data, target="salary")


@pytest.mark.parametrize("content", ["", "a,b,label\n"])
def test_empty_files_are_refused(tmp_path: Path, content: str):
    (tmp_path / "empty.csv").write_text(content)
    with pytest.raises(DataError, match=r"empty\.csv (is empty|has a header but no rows)"):
        _module(tmp_path / "empty.csv")


def test_corrupt_parquet_and_unknown_test_labels_are_refused(tmp_path: Path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet is not a readable Parquet file"):
        _module(tmp_path / "bad.parquet")
    data = write_example_table(tmp_path / "t", rows=200)
    test = pd.read_csv(data / "test.csv")
    test.loc[0, "label"] = ">50K."
    test.to_csv(data / "test.csv", index=False)
    with pytest.raises(DataError, match=r"test\.csv: target 'label' has 1 rows with classes not in training"):
        _module(data)


def test_text_in_a_numeric_column_at_embed_time_is_refused(tmp_path: Path):
    data = write_example_table(tmp_path / "t", rows=200)
    dm = _module(data)
    new = pd.read_csv(data / "test.csv")
    new["age"] = new["age"].astype(object)
    new.loc[3, "age"] = "forty"
    new.to_csv(tmp_path / "new.csv", index=False)
    embed_dm = TableDataModule(tmp_path / "new.csv", _cfg(val_fraction=0.0, test_fraction=0.0))
    embed_dm.load_state_dict(dm.state_dict())
    with pytest.raises(DataError, match=r"new\.csv: numeric column\(s\) \['age'\] hold text"):
        embed_dm.setup("predict")


def test_ids_are_row_numbers_in_the_files_across_held_out_splits(tmp_path: Path):
    data = write_example_table(tmp_path / "t", rows=800)
    dm = _module(data, numeric_scaling="minmax")
    age = dm.numeric[:, 0].double() * dm.fitted["scale"][0] + dm.fitted["shift"][0]  # undo the min-max scaling
    files = pd.concat([pd.read_csv(data / "train.csv"), pd.read_csv(data / "test.csv")], ignore_index=True)
    assert sorted(dm.row_id.tolist()) == list(range(800))
    assert np.allclose(age.numpy(), files["age"].to_numpy()[dm.row_id.numpy()])
    shuffled = dm.row_id.numpy()[::-1].copy()
    assert np.array_equal(dm.row_id.numpy()[dm.positions(shuffled)], shuffled)
    # new rows without the target column are embedded whole, in file order, with the training encoders
    files.drop(columns="label").head(50).to_csv(tmp_path / "new.csv", index=False)
    new = TableDataModule(tmp_path / "new.csv", dm.cfg)
    new.load_state_dict(dm.state_dict())
    new.setup("predict")
    batch = next(iter(new.predict_dataloader()))
    assert batch["id"].tolist() == list(range(50)) and new.target is None


# ---- tables larger than memory (stream.py) ---------------------------------------------------------------------
def test_streamed_statistics_equal_the_in_memory_fit_on_the_same_training_rows(tmp_path: Path, monkeypatch):
    from ssl_domains_tabular import stream
    from ssl_domains_tabular.schema import encode_table, fit_schema

    monkeypatch.setattr(stream, "BATCH_ROWS", 50)  # many batches: the moments are merged, the vocabularies joined
    monkeypatch.setattr("ssl_domains_tabular.data.BATCH_ROWS", 50)
    data = write_example_table(tmp_path / "t", rows=800)
    train = pd.read_csv(data / "train.csv", skipinitialspace=True)
    train.loc[[3, 70], "age"], train.loc[10, "income"] = np.nan, np.nan
    train.to_csv(data / "train.csv", index=False)
    train = pd.read_csv(data / "train.csv", skipinitialspace=True)
    for scaling in ("quantile", "standard", "minmax"):
        dm = _module(data, storage="stream", numeric_scaling=scaling, missing="impute")
        assert dm.streamed and len(dm.split) == 800  # train.csv's 600 rows, then test.csv's 200
        rows = np.flatnonzero(dm.split.numpy()[:600] == SPLIT_TRAIN)
        expected = fit_schema(train.iloc[rows], data / "train.csv", dm.cfg)
        assert expected.keys() == dm.fitted.keys()
        for key, value in expected.items():
            if key in ("median", "shift", "scale", "quantiles"):
                np.testing.assert_allclose(dm.fitted[key], value, rtol=1e-12, atol=1e-12)
            else:
                assert dm.fitted[key] == value, key
        test = encode_table(pd.read_csv(data / "test.csv", skipinitialspace=True), data / "test.csv", dm.fitted)
        np.testing.assert_array_equal(dm.numeric.numpy()[600:], test.numeric)
        np.testing.assert_array_equal(dm.categorical.numpy()[600:], test.categorical)
        assert (dm.split.numpy()[600:] == SPLIT_TEST).all() and dm.label[600:].tolist() == test.target.tolist()


def test_hashed_split_shares_and_batches_from_the_memory_maps(tmp_path: Path):
    data = write_example_table(tmp_path / "t", rows=20_000)
    frame = pd.concat([pd.read_csv(data / "train.csv"), pd.read_csv(data / "test.csv")], ignore_index=True)
    frame.to_parquet(tmp_path / "all.parquet", index=False)
    dm = _module(tmp_path / "all.parquet", storage="stream")
    shares = {s: float((dm.split == s).float().mean()) for s in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST)}
    assert abs(shares[SPLIT_TEST] - 0.2) < 0.01 and abs(shares[SPLIT_VAL] - 0.16) < 0.01  # 0.2 of the other 0.8
    again = _module(tmp_path / "all.parquet", storage="stream", batch_size=7)
    assert torch.equal(again.split, dm.split)  # a function of split_seed and the row
    other = _module(tmp_path / "all.parquet", storage="stream", split_seed=1)
    assert not torch.equal(other.split, dm.split)
    assert isinstance(dm.numeric, torch.Tensor) and dm.numeric.numpy().base is not None  # over the memory map
    batch = next(iter(dm.train_dataloader()))
    assert batch["split"].dtype == torch.int64 and set(batch["split"].tolist()) == {SPLIT_TRAIN}
    np.testing.assert_array_equal(batch["numeric"].numpy(), dm.numeric.numpy()[batch["id"].numpy()])
    assert dm.provenance(np.array([5, 19_999])) == {"file": [str(tmp_path / "all.parquet")] * 2,
                                                   "row": pytest.approx(np.array([5, 19_999]))}  # fmt: skip


def test_a_warm_setup_reads_neither_pass_and_a_failed_encoding_leaves_no_cache(tmp_path: Path, monkeypatch):
    from ssl_domains.indexcache import cache_root
    from ssl_domains_tabular import stream

    data = write_example_table(tmp_path / "t", rows=400)
    first = _module(data, storage="stream")
    monkeypatch.setattr(stream.SchemaPass, "fit", lambda *a: pytest.fail("the statistics were fitted again"))
    monkeypatch.setattr("ssl_domains_tabular.data.encode_to", lambda *a: pytest.fail("the rows were encoded again"))
    again = _module(data, storage="stream")
    assert again.fitted == first.fitted and torch.equal(again.numeric, first.numeric)
    monkeypatch.undo()
    test = pd.read_csv(data / "test.csv")
    test.loc[7, "label"] = "maybe"  # a class the training rows never had: refused while encoding test.csv
    test.to_csv(data / "test.csv", index=False)
    before = set((cache_root() / "index").iterdir())
    with pytest.raises(DataError, match=r"test\.csv: target 'label' has 1 rows with classes not in training"):
        _module(data, storage="stream")
    new = set((cache_root() / "index").iterdir()) - before  # no arrays, no tmp (the build locks stay, empty)
    assert all(p.suffix in (".pkl", ".lock") for p in new)


def test_auto_streams_beyond_the_memory_budget_and_partitioned_parquet_and_feather_read(tmp_path: Path, monkeypatch):
    data = write_example_table(tmp_path / "t", rows=400)
    train = pd.read_csv(data / "train.csv", skipinitialspace=True)
    parts = tmp_path / "parts" / "train"
    for k, chunk in enumerate(np.array_split(np.arange(len(train)), 3)):
        (parts / f"shard={k}").mkdir(parents=True)
        train.iloc[chunk].to_parquet(parts / f"shard={k}" / "part-0.parquet", index=False)
    pd.read_csv(data / "test.csv", skipinitialspace=True).to_feather(tmp_path / "parts" / "test.feather")
    monkeypatch.setenv("SSL_DOMAINS_MEMORY_BUDGET", "1G")
    memory = _module(tmp_path / "parts", drop=["shard"])
    assert not memory.streamed and memory.files == [str(parts), str(tmp_path / "parts" / "test.feather")]
    monkeypatch.setenv("SSL_DOMAINS_MEMORY_BUDGET", "10K")
    streamed = _module(tmp_path / "parts", drop=["shard"])
    assert streamed.streamed and len(streamed.split) == len(memory.split) == 400
    reference = _module(data)  # the same rows as CSV: the same schema
    assert memory.fitted["vocab"] == reference.fitted["vocab"] == streamed.fitted["vocab"]
    assert int((streamed.split == SPLIT_TEST).sum()) == int((memory.split == SPLIT_TEST).sum()) == 100
