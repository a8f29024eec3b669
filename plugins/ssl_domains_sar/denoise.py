"""Despeckling whole SLC rasters of any size with overlapping tiles (reference ``merlin_denoiser.py``).

Both components are denoised tile by tile; the normalised outputs are averaged where tiles overlap, turned
into intensities ``R_a``, ``R_b`` and combined as ``R = 1/2 (R_a + R_b)``; the output is the amplitude
``sqrt(R)``. The raster is streamed one row of tiles at a time: memory grows with the width times the tile size,
never with the height, and a 4096 x 4096 SLC needs well under 3 GB.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ssl_domains import DataError, UserError

from .formats import RasterWriter, SLCSource, open_slc
from .model import DOWNSAMPLING, MerlinUNet


def tile_starts(size: int, patch: int, stride: int) -> list[int]:
    """Tile offsets covering ``[0, size)``; the last tile ends exactly at ``size``."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


@torch.no_grad()
def _normalised_outputs(model: MerlinUNet, tiles: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    outs = []
    dtype = model.dec1.weight.dtype  # float32 weights usually; float64 after a 64-true run
    for start in range(0, tiles.shape[0], batch):
        chunk = tiles[start : start + batch]
        x = torch.cat((chunk.real, chunk.imag), dim=0)[:, None]
        outs.append(model(model.normalize(x).to(dtype)).float()[:, 0].reshape(2, -1, *x.shape[-2:]))
    out = torch.cat(outs, dim=1)
    return out[0], out[1]


def despeckle(
    model: MerlinUNet,
    source: SLCSource,
    writer: RasterWriter,
    patch: int = 256,
    stride: int = 254,
    batch: int = 4,
    centre: bool = False,
    device: str = "cpu",
) -> None:
    """Write ``sqrt(R_hat)`` of ``source`` through ``writer``, streaming rows of tiles."""
    height, width = source.height, source.width
    if patch % DOWNSAMPLING or not 0 < stride <= patch:
        raise UserError(f"--patch must be a multiple of {DOWNSAMPLING} and 0 < --stride <= --patch")
    if min(height, width) < patch:
        raise DataError(
            f"{source.path}: the image ({height} x {width}) is smaller than the {patch}-pixel tile; use "
            f"--patch {max(min(height, width) // DOWNSAMPLING * DOWNSAMPLING, DOWNSAMPLING)}"
        )
    model = model.to(device).eval()
    rows, cols = tile_starts(height, patch, stride), tile_starts(width, patch, stride)
    sums = np.zeros((2, patch, width), dtype=np.float64)  # normalised outputs of a, b for rows [top, top + patch)
    counts = np.zeros((patch, width), dtype=np.float64)
    top = 0
    span, low = float(model.log_max - model.log_min), float(model.log_min)

    def flush(stop: int) -> None:
        n = stop - top
        mean = sums[:, :n] / counts[:n]
        intensity = 0.5 * np.exp(2 * (mean * span + low)).sum(0)  # R = (R_a + R_b) / 2
        writer.write_rows(top, np.sqrt(intensity).astype(np.float32))

    for r in rows:
        if r > top:  # rows above r are covered by no later tile: finish them and slide the buffer
            flush(r)
            shift = r - top
            sums[:, :-shift], counts[:-shift] = sums[:, shift:], counts[shift:]
            sums[:, -shift:], counts[-shift:] = 0.0, 0.0
            top = r
        block = torch.from_numpy(source.read_rows(r, r + patch)).to(device)
        tiles = torch.stack([block[:, c : c + patch] for c in cols])
        if centre:
            from .spectrum import centre_spectrum

            tiles = centre_spectrum(tiles)
        out_a, out_b = _normalised_outputs(model, tiles, batch)
        out_a, out_b = out_a.double().cpu().numpy(), out_b.double().cpu().numpy()
        for k, c in enumerate(cols):
            sums[0, :, c : c + patch] += out_a[k]
            sums[1, :, c : c + patch] += out_b[k]
            counts[:, c : c + patch] += 1.0
    flush(height)


def load_model_from_run(run: Path) -> MerlinUNet:
    """The trained U-Net of a run directory (its ``model.safetensors`` holds the normalisation constants)."""
    from safetensors.torch import load_file

    weights = Path(run) / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{run} holds no model.safetensors; pass the --output of a finished merlin run")
    state = load_file(weights)
    if "enc0.weight" not in state or "log_max" not in state:
        raise UserError(f"{weights} is not a MERLIN model")
    model = MerlinUNet(
        float(state["log_max"]),
        float(state["log_min"]),
        width=state["enc0.weight"].shape[0],
        decoder_width=state["dec5.weight"].shape[0],
    )
    model.load_state_dict(state)
    return model


def denoise_command(argv: list[str]) -> int:
    """``ssl-domains run merlin denoise --run DIR IN OUT``: despeckle an SLC raster into an amplitude GeoTIFF."""
    parser = argparse.ArgumentParser(prog="ssl-domains run merlin denoise", description=denoise_command.__doc__)
    parser.add_argument("input", type=Path, help="SLC raster: complex or 2-band GeoTIFF, or .npy")
    parser.add_argument("output", type=Path, help="despeckled amplitude: .tif (keeps CRS and transform) or .npy")
    parser.add_argument("--run", type=Path, required=True, help="a merlin run directory (train or import-weights)")
    parser.add_argument("--patch", type=int, default=256, help="tile side, a multiple of 32 (default 256)")
    parser.add_argument("--stride", type=int, default=254, help="tile step (default 254, as the reference)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--centre-spectrum", action="store_true", help="centre each tile's spectrum first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    model = load_model_from_run(args.run)
    source = open_slc(args.input)
    if args.output.resolve() == args.input.resolve():
        raise UserError("the output would overwrite the input; choose another OUT path")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    writer = RasterWriter(args.output, source.height, source.width, source.profile)
    start = time.perf_counter()
    try:
        despeckle(model, source, writer, args.patch, args.stride, args.batch, args.centre_spectrum, args.device)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    seconds = time.perf_counter() - start
    print(f"wrote {args.output} ({source.height} x {source.width}) in {seconds:.1f} s")
    return 0


def import_weights_command(argv: list[str]) -> int:
    """``ssl-domains run merlin import-weights``: turn the authors' .pth weights into a merlin run directory."""
    import yaml

    from ssl_domains import registry, resolve_config, save_weights
    from ssl_domains.run import CONFIG_FILE, read_yaml

    from .weights import SENSORS, load_official

    parser = argparse.ArgumentParser(
        prog="ssl-domains run merlin import-weights", description=import_weights_command.__doc__
    )
    parser.add_argument("--weights", required=True, help=f"{', '.join(SENSORS)} (from deepdespeckling) or a .pth path")
    parser.add_argument("--sensor", choices=sorted(SENSORS), help="constants to use (default: same as --weights)")
    parser.add_argument("--out", type=Path, required=True, help="run directory to create")
    args = parser.parse_args(argv)
    sensor = args.sensor or args.weights
    if sensor not in SENSORS:
        raise UserError(f"--weights is a file: say which constants it needs with --sensor ({', '.join(SENSORS)})")
    model = load_official(args.weights, sensor)
    plugin = registry.load("merlin")
    cfg = resolve_config(plugin, ".", [read_yaml(SENSORS[sensor], plugin)])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_mapping(), sort_keys=False))
    save_weights(model, args.out / "model.safetensors")
    print(
        f"wrote {args.out}: MERLIN {args.weights} weights with the {sensor} constants (M={float(model.log_max):.4f}, "
        f"m={float(model.log_min):.4f}); despeckle with: ssl-domains run merlin denoise --run {args.out} IN OUT"
    )
    return 0


class _ArraySource(SLCSource):
    def __init__(self, slc: np.ndarray) -> None:
        super().__init__(Path("<array>"), *slc.shape)
        self.slc = slc

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.slc[start:stop], dtype=np.complex64)


class _ArrayWriter:
    def __init__(self, height: int, width: int) -> None:
        self.amplitude = np.zeros((height, width), dtype=np.float32)

    def write_rows(self, start: int, block: np.ndarray) -> None:
        self.amplitude[start : start + block.shape[0]] = block


def despeckle_array(
    model: MerlinUNet, slc: np.ndarray, patch: int | None = None, stride: int | None = None, **kwargs
) -> np.ndarray:
    """Estimated intensity ``R_hat`` of an in-memory SLC ``[H, W]``; the tile defaults to min(256, image)."""
    if not np.iscomplexobj(slc):
        raise DataError("despeckle_array needs a complex SLC array. MERLIN cannot despeckle amplitude images")
    if patch is None:
        patch = min(256, min(slc.shape) // DOWNSAMPLING * DOWNSAMPLING)
    stride = stride if stride is not None else max(patch - 2, 1)
    writer = _ArrayWriter(*slc.shape)
    despeckle(model, _ArraySource(slc), writer, patch=patch, stride=stride, **kwargs)  # type: ignore[arg-type]
    return writer.amplitude.astype(np.float64) ** 2
