"""The core's datamodule base: setup runs once, fitted values are computed once, saved and restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_domains import FittedDataModule, SSLDataModule


class Counting(FittedDataModule):
    """Reads a tensor file; standardises with a mean fitted on it (counting how often it is computed)."""

    def __init__(self, data: Path, cfg: object = None) -> None:
        super().__init__(data, cfg)
        self.reads = self.fits = 0

    def read(self, stage: str | None) -> None:
        self.reads += 1
        x = torch.load(self.data)

        def mean() -> torch.Tensor:
            self.fits += 1
            return x.mean(0)

        self.x = x - self.fit("mean", mean)

    def input_spec(self) -> dict:
        return {"mean": self.fitted["mean"].tolist()}

    def train_dataloader(self) -> list:
        return [self.x]

    def predict_dataloader(self) -> list:
        return [self.x]


def test_setup_reads_once_and_fit_computes_once(tmp_path: Path):
    torch.save(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), tmp_path / "x.pt")
    dm = Counting(tmp_path / "x.pt")
    assert isinstance(dm, SSLDataModule) and dm.data == tmp_path / "x.pt"
    dm.setup("fit")
    dm.setup("fit")
    dm.setup("predict")
    assert dm.reads == 1 and dm.fits == 1
    assert dm.state_dict()["mean"].tolist() == [2.0, 4.0]


def test_a_restored_state_is_used_instead_of_fitting_on_new_data(tmp_path: Path):
    torch.save(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), tmp_path / "train.pt")
    torch.save(torch.tensor([[10.0, 10.0]]), tmp_path / "new.pt")
    trained = Counting(tmp_path / "train.pt")
    trained.setup("fit")
    new = Counting(tmp_path / "new.pt")
    new.load_state_dict(trained.state_dict())
    new.setup("predict")
    assert new.fits == 0 and new.x.tolist() == [[8.0, 6.0]]  # the training mean, not the new data's
    assert new.state_dict().keys() == {"mean"}


def test_a_failed_read_can_be_retried(tmp_path: Path):
    dm = Counting(tmp_path / "missing.pt")
    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            dm.setup("fit")
    assert dm.reads == 2 and not dm.ready


def test_a_loader_state_from_an_epochs_end_starts_the_epoch_the_training_loop_resumed_in():
    from ssl_domains.data import train_loader

    def epoch_rows(loader) -> list[int]:
        return [int(i) for batch in loader for i in batch]

    loader = train_loader(list(range(40)), batch_size=8, seed=3)
    first = epoch_rows(loader)
    state = loader.state_dict()  # the position after the epoch's last batch, before its end was marked
    assert state["consumed"] == 5 and not state["finished"]
    second = train_loader(list(range(40)), batch_size=8, seed=3)
    second.load_state_dict(state)
    second.follow_epoch(1)  # Lightning resumed such a checkpoint in the next epoch
    resumed = epoch_rows(second)
    assert sorted(resumed) == list(range(40)) and resumed != first  # a whole epoch, in epoch 1's order
    fresh = train_loader(list(range(40)), batch_size=8, seed=3)
    fresh._set_epoch(1)
    assert resumed == epoch_rows(fresh)
    same = train_loader(list(range(40)), batch_size=8, seed=3)
    same.load_state_dict(state)
    same.follow_epoch(0)  # the same epoch: the state's position stands, and the epoch has no batch left
    assert epoch_rows(same) == []
