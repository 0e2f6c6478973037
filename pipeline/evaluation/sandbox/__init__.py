"""The only code that starts untrusted programs: the pre-forked server (``server.py``), the
zygote it forks every program from (``zygote.py``), the box it puts each one in (``box.py``), and
the checkers that run inside it: HumanEval/MBPP's (``function_checker.py``) and LiveCodeBench's
(``lcb_checker.py``).

Standard library only below here: this package must run with nothing of the project imported
into the processes that hold a candidate program.
"""

from pipeline.evaluation.sandbox.server import (
    IsolationUnavailable,
    Layers,
    Verdict,
    execute,
    execute_many,
    layers,
    remove_tree,
    require_isolation,
)

__all__ = [
    "IsolationUnavailable",
    "Layers",
    "Verdict",
    "execute",
    "execute_many",
    "layers",
    "remove_tree",
    "require_isolation",
]
