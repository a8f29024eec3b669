#!/usr/bin/env bash
# The GPU sheet: every plugin's base preset in bf16, eager and compiled, with its reference, within about
# 7.5 minutes of device time; JSON lines (samples/s, step time, peak memory, FLOPs/step, MFU against the device's
# own bf16 peak, loader ÷ step) in OUTDIR. The prerequisites are checked on the CPU first (imports, reference
# checkouts, timm 0.4.5 / 0.4.9, CUDA), so no device time goes on a typo. Details: benchmarks/_speed_sheet.py.
#
#   bash benchmarks/gpu_sheet.sh [OUTDIR]          # on a GPU machine; OUTDIR defaults to $OUT, else ./gpu_sheet_out
#   bash benchmarks/gpu_sheet.sh --dry-run [OUTDIR] # on a CPU: tiny preset, one step each, under 2 minutes
#
# Options after the above go to _speed_sheet.py (--budget S, --run-timeout S, --parallel N, --plugins a,b,
# --no-compile). References: REF_ROOT (default ~/.cache/ssl-domains-refs) or REF_<PLUGIN>=DIR; a missing one is
# recorded in OUTDIR/notes.jsonl and that plugin runs without it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [[ -z "${VIRTUAL_ENV:-}" && -f "$root/.venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    . "$root/.venv/bin/activate"
fi
python -c "import torch, ssl_domains" 2>/dev/null || { echo "error: torch / ssl_domains not importable (activate the project's environment)" >&2; exit 2; }
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec python "$here/_speed_sheet.py" "$@"
