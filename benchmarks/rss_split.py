"""Peak RSS of a command, split into anonymous memory and mapped files (``/proc/PID/status``, sampled).

``ru_maxrss`` (what ``benchmarks/scale.py`` reports) counts the pages of memory-mapped files a process touched
as well as its own memory. This runs a command and samples its ``RssAnon``, ``RssFile`` and ``VmHWM`` every
``--every`` seconds, so that a peak can be read as what the process holds and what the page cache lends it::

    python benchmarks/rss_split.py --label nodes=4898000 -- python -m ssl_domains train --plugin graphmae ...

Prints one JSON line: the peaks in GB (a sampled peak of anonymous memory can miss a spike shorter than
``--every``; ``VmHWM`` cannot) and the command's exit status.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path


def _status(pid: int) -> dict[str, float]:
    """``RssAnon``, ``RssFile`` and ``VmHWM`` of ``pid`` in GB (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024 / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--label", action="append", default=[], help="key=value added to the JSON line")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peaks = {"RssAnon": 0.0, "RssFile": 0.0, "VmHWM": 0.0}
    while process.poll() is None:
        for key, value in _status(process.pid).items():
            peaks[key] = max(peaks[key], value)
        time.sleep(args.every)
    row = {**dict(label.split("=", 1) for label in args.label), "rc": process.returncode,
           "wall_s": round(time.perf_counter() - start, 1), "peak_anon_gb": round(peaks["RssAnon"], 3),
           "peak_file_gb": round(peaks["RssFile"], 3), "vm_hwm_gb": round(peaks["VmHWM"], 3)}  # fmt: skip
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
