"""``ssl-domains run dae reconstruct``: denoise feature vectors with a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def reconstruct(argv: list[str]) -> int:
    """Write the autoencoder's reconstruction of every row of ``--data`` to ``--out`` (.npy)."""
    from ssl_domains import UserError, atomic_write, load_encoder

    parser = argparse.ArgumentParser(prog="ssl-domains run dae reconstruct", description=reconstruct.__doc__)
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.out.suffix != ".npy":
        raise UserError(f"--out must be a .npy file, got {args.out.name}")
    model, dm = load_encoder(args.run, args.data)
    rows = []
    with torch.no_grad():
        for batch in dm.predict_dataloader():
            rows.append(model(batch["x"]) * dm.fitted["std"] + dm.fitted["mean"])  # back to the input's units
    result = torch.cat(rows).numpy()

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, result)

    atomic_write(args.out, save)
    print(f"wrote {result.shape[0]} reconstructed rows to {args.out}")
    return 0
