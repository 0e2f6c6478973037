"""The only code that starts untrusted programs: the pre-forked server (``server.py``), the
zygote it forks every program from (``zygote.py``) and LiveCodeBench's checker (``lcb_checker.py``).

Standard library only below here: this package must run with nothing of the project imported
into the processes that hold a candidate program.
"""

from pipeline.evaluation.sandbox.server import Verdict, execute, execute_many

__all__ = ["Verdict", "execute", "execute_many"]
