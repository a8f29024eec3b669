"""Streaming embedding export: .npy and Parquet written in blocks read back exactly, GeoParquet geometry, nothing
left behind on failure, provenance columns row-aligned, constant memory, and one shard per DDP rank."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import ssl_domains.evaluation.writer as writer_module
from ssl_domains import UserError
from ssl_domains.evaluation import EmbeddingWriter, export_embeddings, shard_path, wkb_polygons
from tests.conftest import run_cli


def test_npy_written_in_blocks_reads_back_and_memory_maps(tmp_path: Path):
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(n, 5)) for n in (3, 1, 7)]
    with EmbeddingWriter(tmp_path / "e.npy") as writer:
        start = 0
        for block in blocks:
            ids = np.arange(start, start + len(block))
            writer.write(ids, block, columns={"path": [f"clip{i}.flac" for i in ids]})
            start += len(block)
        paths = writer.close()
    assert sorted(p.name for p in paths) == ["e.ids.npy", "e.npy", "e.rows.parquet"]
    assert paths[-1].name == "e.npy"  # the vectors last: their presence marks a finished export
    vectors = np.load(tmp_path / "e.npy", mmap_mode="r")
    assert vectors.shape == (11, 5) and vectors.dtype == np.float32
    assert np.array_equal(vectors, np.concatenate(blocks).astype(np.float32))
    assert np.load(tmp_path / "e.ids.npy").tolist() == list(range(11))
    rows = pq.read_table(tmp_path / "e.rows.parquet").to_pydict()
    assert rows["id"] == list(range(11)) and rows["path"][10] == "clip10.flac"


def test_parquet_is_written_in_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(writer_module, "ROW_GROUP_BYTES", 4 * 8 * 10)  # 10 rows of 8 floats per row group
    with EmbeddingWriter(tmp_path / "e.parquet") as writer:
        for k in range(5):
            writer.write(np.arange(7 * k, 7 * k + 7), np.full((7, 8), k), labels=np.full(7, k))
        writer.close()
    file = pq.ParquetFile(tmp_path / "e.parquet")
    assert file.metadata.num_rows == 35 and file.metadata.num_row_groups == 3  # flushed at 14, 28 and the end
    table = file.read().to_pydict()
    assert list(table) == ["id", "embedding", "label"]
    assert table["id"] == list(range(35)) and table["embedding"][34] == [4.0] * 8 and table["label"][0] == 0


def test_geometry_column_is_geoparquet_wkb(tmp_path: Path):
    rings = np.array([[[10, 50], [11, 50], [11, 51], [10, 51]], [[np.nan, 0], [0, 0], [0, 0], [0, 0]]], float)
    with EmbeddingWriter(tmp_path / "g.parquet") as writer:
        writer.write(np.arange(2), np.zeros((2, 3)), columns={"geometry": rings, "crs": ["EPSG:32632", ""]})
        writer.close()
    table = pq.read_table(tmp_path / "g.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo == {"version": "1.1.0", "primary_column": "geometry",
                   "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}  # fmt: skip
    wkb, missing = table.column("geometry").to_pylist()
    assert missing is None
    order, kind, nrings, npoints = struct.unpack("<BIII", wkb[:13])
    assert (order, kind, nrings, npoints) == (1, 3, 1, 5)
    points = np.frombuffer(wkb[13:], "<f8").reshape(5, 2)
    assert points.tolist() == [[10, 50], [11, 50], [11, 51], [10, 51], [10, 50]]  # closed ring
    assert wkb_polygons(rings[:1])[0] == wkb


def test_a_failed_export_leaves_nothing(tmp_path: Path):
    with pytest.raises(KeyError), EmbeddingWriter(tmp_path / "e.npy") as writer:
        writer.write(np.arange(2), np.zeros((2, 3)), labels=np.zeros(2))
        raise KeyError("the loader failed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="no items"), EmbeddingWriter(tmp_path / "e.parquet") as writer:
        writer.close()
    with pytest.raises(RuntimeError, match="may not be named"), EmbeddingWriter(tmp_path / "e.parquet") as writer:
        writer.write(np.arange(2), np.zeros((2, 3)), columns={"embedding": [1, 2]})
    assert list(tmp_path.iterdir()) == []


def test_shard_names():
    assert shard_path(Path("out/e.parquet"), 0, 1) == Path("out/e.parquet")
    assert shard_path(Path("out/e.parquet"), 1, 4) == Path("out/e-00001-of-00004.parquet")


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int, width: int) -> None:
        self.n, self.width = n, width

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.full((self.width,), float(i)), "id": torch.tensor(i)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Data:
    """``n`` items of ``width`` floats; records the resident memory each time a batch's provenance is asked."""

    def __init__(self, n: int, width: int) -> None:
        self.n, self.width, self.rss = n, width, []

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_Items(self.n, self.width), batch_size=500)

    def provenance(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        self.rss.append(_rss_mb())
        return {"row": ids * 10}


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["x"] * self.scale


def test_export_streams_in_constant_memory_with_provenance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """80k items of 256 floats (82 MB of vectors) in row groups of 2 MB: memory stays flat from batch to batch."""
    monkeypatch.setattr(writer_module, "ROW_GROUP_BYTES", 2 << 20)
    data = _Data(80_000, 256)
    done = export_embeddings(_Model(), data, tmp_path / "e.parquet", accelerator="cpu")
    assert (done.items, done.rows, done.dim, done.world_size) == (80_000, 80_000, 256, 1)
    table = pq.read_table(tmp_path / "e.parquet", columns=["id", "row"]).to_pydict()
    assert table["id"] == list(range(80_000)) and table["row"][123] == 1230
    assert pq.read_table(tmp_path / "e.parquet").slice(7, 1).to_pydict()["embedding"][0] == [14.0] * 256
    grown = max(data.rss) - data.rss[10]  # after 10 batches (5000 rows) the writer has reached its steady state
    assert grown < 20, f"memory grew by {grown:.0f} MB over the export of 82 MB of embeddings"


@pytest.mark.slow
def test_embed_under_ddp_writes_one_shard_per_rank(vectors: Path, tmp_path: Path):
    run = tmp_path / "run"
    train = ("train", "--plugin", "dae", "--data", str(vectors), "--output", str(run), "--fast-dev-run",
             "--set", "trainer.progress_bar=false")  # fmt: skip
    assert run_cli(*train).returncode == 0
    whole = tmp_path / "whole.parquet"
    assert run_cli("embed", "--run", str(run), "--data", str(vectors), "--out", str(whole)).returncode == 0
    out = tmp_path / "emb.parquet"
    done = run_cli(
        "embed", "--run", str(run), "--data", str(vectors), "--out", str(out), "--device", "cpu", "--devices", "2",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted(tmp_path.glob("emb-*-of-00002.parquet"))
    assert [p.name for p in shards] == ["emb-00000-of-00002.parquet", "emb-00001-of-00002.parquet"]
    parts = [pq.read_table(p).to_pandas() for p in shards]
    assert all(len(p) == 128 for p in parts)  # the unrepeated sampler: each item once, on one rank
    both = np.concatenate([p["id"].to_numpy() for p in parts])
    assert sorted(both.tolist()) == list(range(256))
    reference = pq.read_table(whole).to_pandas().set_index("id")
    for part in parts:
        expected = np.stack(reference.loc[part["id"], "embedding"].to_numpy())
        assert np.allclose(np.stack(part["embedding"].to_numpy()), expected, atol=1e-6)
