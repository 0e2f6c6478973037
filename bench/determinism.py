"""Are two runs of the same recipe byte-identical on this machine? Samples the recipe twice into
two fresh runs directories (same run id) and compares the raw samples row by row.

    .venv/bin/python bench/determinism.py [--load N] [RECIPE] [KEY=VALUE ...]    (default: recipes/default.yaml)

Prints how many rows differ and, for each, the first token index where the completions part.
``--load N`` runs N busy-looping processes during the second run (a loaded machine, as CI is).
Each run starts its own engine (about 1 to 3 minutes each on the default).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    args = sys.argv[1:]
    load = 0
    if args[:1] == ["--load"]:
        load, args = int(args[1]), args[2:]
    recipe, overrides = (args[:1] or ["recipes/default.yaml"])[0], args[1:]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssd-determinism-") as tmp:
        for i in (1, 2):
            started = time.time()
            burners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load if i == 2 else 0)
            ]
            cmd = [sys.executable, "-m", "pipeline.cli", "sample", recipe, f"runs_dir={tmp}/{i}", "--run-id", "det"]
            try:
                subprocess.run([*cmd, *overrides], cwd=ROOT, check=True, capture_output=True)
            finally:
                for burner in burners:
                    burner.kill()
            print(
                f"run {i}: {time.time() - started:.0f} s{f' with {load} busy processes' if burners else ''}", flush=True
            )
            path = Path(tmp) / str(i) / "det" / "samples.raw.jsonl"
            rows.append({(r["id"], r["sample_index"]): r for r in map(json.loads, path.read_text().splitlines())})
    first, second = rows
    differ = []
    for key in sorted(first):
        a, b = first[key]["completion_token_ids"], second[key]["completion_token_ids"]
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            differ.append((key, at))
    print(f"{recipe} {' '.join(overrides)}: {len(differ)} of {len(first)} samples differ between two runs")
    for (prompt, index), at in differ:
        print(f"  {prompt} #{index}: from token {at}")


if __name__ == "__main__":
    main()
