#!/usr/bin/env bash
# What a user gets from PyPI is what is tested: build the wheel and the sdist, install the wheel with
# [graph,tabular] into a clean venv that already holds a *different* torch (2.13.0, the CPU build; CI's main
# environment has 2.11.0), check that the install kept that torch, then `ssl-domains list` and two tiny trains,
# run from outside the checkout so that only the installed wheel is imported.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -m pip install --quiet build
python -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { tail -n 30 "$work/build.log"; exit 1; }
ls "$work"/dist/*.whl "$work"/dist/*.tar.gz

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0
wheel=$(ls "$work"/dist/*.whl)
"$work/venv/bin/python" -m pip install --quiet "$wheel[graph,tabular]"
version=$("$work/venv/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
[ "$version" = "2.13.0" ] || { echo "installing the wheel replaced the environment's torch 2.13.0 with $version"; exit 1; }
echo "torch kept: $version"

cd "$work"
"$work/venv/bin/ssl-domains" list
"$work/venv/bin/ssl-domains" list | grep -E "^graphmae +[^ ]+ +ok" > /dev/null
"$work/venv/bin/ssl-domains" list | grep -E "^tjepa +[^ ]+ +ok" > /dev/null
"$work/venv/bin/ssl-domains" train --plugin graphmae --data "$repo/datasets/cora" --output "$work/runs/cora" \
  --set trainer.max_epochs=2 --set trainer.progress_bar=false > "$work/graph.log" 2>&1 || { tail -n 20 "$work/graph.log"; exit 1; }
"$work/venv/bin/ssl-domains" train --plugin tjepa --data "$repo/datasets/adult" --config adult --output "$work/runs/adult" \
  --set trainer.max_epochs=1 --set trainer.limit_train_batches=5 --set trainer.progress_bar=false \
  > "$work/tab.log" 2>&1 || { tail -n 20 "$work/tab.log"; exit 1; }
"$work/venv/bin/ssl-domains" embed --run "$work/runs/cora" --data "$repo/datasets/cora" --out "$work/cora.parquet"
echo "wheel smoke test passed (torch $version)"
