"""Rebuild the MBPP files shipped in data/ from the real benchmark file.

    python data/build.py ../shared/data/mbpp.jsonl

mbpp_train.jsonl: MBPP's non-test tasks (ids 1-10 and 511-974) as HumanEval-shaped prompts
(signature from the reference solution's def line, the task text as docstring, one example),
without the three whose statement repeats a test task's (602 = 217, 704 = 248, 872 = 216).

mbpp_test.jsonl: MBPP's test split (ids 11-510), one record per line, each line's bytes exactly
as in the real file, so the evaluation set can be checked against upstream byte for byte.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluation.benchmarks import MBPP_TEST_IDS  # noqa: E402
from pipeline.prompts import mbpp_train_prompts  # noqa: E402

source = Path(sys.argv[1])
rows, dropped = mbpp_train_prompts(source)
out = Path(__file__).parent / "mbpp_train.jsonl"
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"wrote {len(rows)} prompts to {out} (dropped {', '.join(dropped)}: their statements are test tasks)")

test_lines = [line for line in source.read_bytes().splitlines() if json.loads(line)["task_id"] in MBPP_TEST_IDS]
if len(test_lines) != len(MBPP_TEST_IDS):
    sys.exit(f"{source}: expected {len(MBPP_TEST_IDS)} test tasks (ids 11-510), found {len(test_lines)}")
out = Path(__file__).parent / "mbpp_test.jsonl"
out.write_bytes(b"".join(line + b"\n" for line in test_lines))
print(f"wrote {len(test_lines)} test tasks to {out}")
