#!/usr/bin/env bash
# Download the wheels bench/device.sh installs offline on a lent GPU (bench/device-wheels.txt),
# for the GPU image's interpreter (CPython 3.12, x86-64 Linux), into .whl/ (git-ignored).
#
#   bench/fetch_wheels.sh [DEST]            # here, where the package registry is reachable
#   PY_VERSION=3.11 bench/fetch_wheels.sh /tmp/w   # for another interpreter (the offline-install test)
#
# Then name .whl in the device call's carry list; bench/device.sh installs from it with --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYTHON=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    "${platforms[@]}" -d "$DEST" -r bench/device-wheels.txt
du -sh "$DEST"
