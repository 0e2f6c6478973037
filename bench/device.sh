#!/usr/bin/env bash
# The one command a lent GPU runs, from the repository root, with .whl/ carried:
#
#   bench/device.sh                  # set-up (offline), then bench/gpu_train.py at the recipe's shape
#   bench/device.sh --install-only   # the set-up alone
#
# What it measures: the Gemma 4 26B-A4B LoRA training step of recipes/gemma4-26b-a4b.yaml (all 30
# layers, experts included, training.max_length tokens, micro batch 1, gradient checkpointing, the
# supervised-rows loss) on random bf16 weights: peak memory beside `ssd plan`'s figures, time to
# build, tokens/s, MFU; the same at micro batch 2 and at 8192 tokens (the recipe's trade-offs); then
# `ssd export --format peft-per-expert` of one trained layer at full width (time, peak RSS, the merge
# check). Results: $OUT/gpu_train.json and $OUT/gpu_train.log (bench/out without $OUT).
# Planned under 5 minutes on an H100/H200 (the run is stopped at 280 s; its JSON is written after
# the training steps and again after the export, so a stop during the export keeps the training).
#
# Set-up without network: the wheels in .whl/ (bench/fetch_wheels.sh, run beforehand where the
# registry is reachable; bench/device-wheels.txt lists them) install with --no-index into a private
# directory that goes first on PYTHONPATH, so they win over the image's copies; the project runs
# from the working tree (PYTHONPATH), nothing else is installed. TRL and vLLM are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${SSD_WHEELS:-.whl}
SITE=${SSD_SITE:-/tmp/ssd-site}
OUT=${OUT:-bench/out}
LIMIT_S=${SSD_BENCH_TIMEOUT:-280}   # the run's own limit (a CPU test of the same command sets more)

if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "bench/device.sh: no wheels in $WHEELS: run bench/fetch_wheels.sh where the registry is reachable," \
        "and carry $WHEELS with the call" >&2
    exit 2
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Every pinned distribution must now resolve to the carried version, ahead of the image's own.
"$PYTHON" - <<'PY'
import importlib.metadata, pathlib, sys
wrong = []
for line in pathlib.Path("bench/device-wheels.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        name, version = line.split("==")
        found = importlib.metadata.version(name)
        if found != version:
            wrong.append(f"{name} {found} (wanted {version})")
if wrong:
    sys.exit("bench/device.sh: after the offline install: " + ", ".join(wrong))
print("set-up: " + ", ".join(l.strip() for l in open("bench/device-wheels.txt") if "==" in l))
PY
if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi

mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
export PYTHONUNBUFFERED=1
set -o pipefail
# The recipe's shape (4 steps), then the recipe's two trade-offs (2 steps each), then the per-expert
# export of one layer; arguments given to device.sh come last and win (--no-export, --extra-shapes "").
timeout "$LIMIT_S" "$PYTHON" bench/gpu_train.py --out "$OUT/gpu_train.json" --extra-shapes 2x4096,1x8192 "$@" 2>&1 |
    tee "$OUT/gpu_train.log"
