"""``ssl-domains run ssast stats --data DIR``: the fbank mean and std of a folder, printed as config lines.

SSAST normalises fbank frames with fixed dataset statistics (``(x - mean) / (2 std)``; the reference ships
AudioSet's -4.2677 and 4.5690 and ``get_norm_stats.py`` for new data). Pass the printed lines to later runs
(``--set ssast.norm_mean=... --set ssast.norm_std=...``) to fix them; without them a run computes its own from its
training clips and saves them with the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ssl_domains import UserError

from .formats import find_clips


def main(argv: list[str]) -> int:
    """Print ``ssast.norm_mean`` and ``ssast.norm_std`` of the clips under ``--data``."""
    from .data import clip_features, dataset_statistics
    from .plugin import SSASTConfig

    parser = argparse.ArgumentParser(prog="ssl-domains run ssast stats", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder, audio file, manifest CSV or Kaldi wav.scp")
    parser.add_argument("--max-clips", type=int, default=5000, help="read at most this many clips")
    parser.add_argument("--num-mel-bins", type=int, default=128)
    args = parser.parse_args(argv)
    cfg = SSASTConfig()
    clips = find_clips(Path(args.data), cfg.label_regex)
    if not clips:
        raise UserError(f"{args.data}: no clips")
    # spread over the sorted list, as training does: a corpus sorted by speaker gives every speaker a share
    clips = [clips[i] for i in np.linspace(0, len(clips) - 1, min(len(clips), args.max_clips)).round().astype(int)]
    feats = (clip_features(c, "fbank", args.num_mel_bins, cfg.min_seconds) for c in clips)  # one clip at a time
    mean, std = dataset_statistics(feats)
    print(f"# fbank statistics of {len(clips)} clips under {args.data}")
    print(f"ssast.norm_mean={mean:.6f}")
    print(f"ssast.norm_std={std:.6f}")
    return 0
