"""Experiment tracking: ``metrics.jsonl`` in the run directory, mirrored to Weights & Biases.

The JSONL file is the record: it needs no account, survives without wandb and is what the
report and scripts read (``jq 'select(.stage=="train")' metrics.jsonl``). wandb is a mirror
for people who want dashboards: offline by default, so a run never needs an account or the
network and its files sit in ``<run_dir>/wandb/`` (upload later with ``wandb sync``); online
when the user asks for it; off with ``disabled``. A missing or failing wandb costs a warning,
never the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

log = logging.getLogger(__name__)

Mode = Literal["offline", "online", "disabled"]
MODES = ("offline", "online", "disabled")
METRICS_FILE = "metrics.jsonl"
RESERVED = ("stage", "step", "timestamp")


def _json_default(value: Any) -> Any:
    """numpy and torch values log as numbers and lists; anything else as its text, not as a crash."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _scalars(prefix: str, data: Mapping[str, Any]) -> Iterator[tuple[str, float | int | str]]:
    """Nested dicts flattened to ``prefix/a/b`` keys; wandb charts scalars, lists stay in the JSONL."""
    for key, value in data.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            yield from _scalars(name, value)
        elif hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            yield name, value.item()
        elif isinstance(value, (int, float, str)):
            yield name, value


class Tracker:
    """Logs dicts per stage and step to ``run_dir/metrics.jsonl`` and mirrors them to wandb.

    Use as a context manager, so the wandb run is finished (and marked failed when the
    block raised) and the file closed::

        with Tracker(run_dir, project="ssd", mode="offline", config=recipe_dict) as tracker:
            tracker.log({"loss": 1.23, "learning_rate": 1e-4}, stage="train", step=10)

    In wandb each stage gets its own step axis (``train/step``, ``eval/step``), because
    stages count steps differently and wandb's global step must only grow.
    """

    def __init__(
        self, run_dir: Path | str, project: str = "ssd", mode: Mode = "offline", config: Mapping[str, Any] | None = None
    ):
        if mode not in MODES:
            raise ValueError(f"tracking mode {mode!r} is not one of {', '.join(MODES)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._file = open(self.path, "a")
        self._stages: set[str] = set()
        self.wandb_run = None if mode == "disabled" else self._start_wandb(project, mode, config)

    def _start_wandb(self, project: str, mode: Mode, config: Mapping[str, Any] | None) -> Any:
        try:
            import wandb
        except ImportError:
            log.warning(
                "tracking: wandb is not installed; metrics go to %s only (pip install wandb to mirror them)", self.path
            )
            return None
        try:
            return wandb.init(
                project=project,
                name=self.run_dir.name,
                dir=str(self.run_dir),
                mode=mode,
                config=dict(config or {}),
                settings=wandb.Settings(console="off"),
            )
        except Exception as exc:  # wandb raises many types (auth, network, usage); none may stop a run
            hint = " (run `wandb login` or set WANDB_API_KEY, or use mode offline)" if mode == "online" else ""
            log.warning(
                "tracking: wandb %s mode failed to start: %s%s; metrics go to %s only", mode, exc, hint, self.path
            )
            return None

    def log(self, data: Mapping[str, Any], *, stage: str, step: int | None = None) -> None:
        """Append one line ``{"stage", "step", "timestamp", **data}`` and mirror its scalars."""
        clash = [key for key in RESERVED if key in data]
        if clash:
            raise ValueError(
                f"tracking: keys {', '.join(clash)} are reserved in {self.path}; rename them in the logged dict"
            )
        row = {
            "stage": stage,
            "step": step,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            **data,
        }
        self._file.write(json.dumps(row, default=_json_default) + "\n")
        self._file.flush()
        if self.wandb_run is None:
            return
        if stage not in self._stages:
            self.wandb_run.define_metric(f"{stage}/step")
            self.wandb_run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self._stages.add(stage)
        payload = dict(_scalars(stage, data))
        if step is not None:
            payload[f"{stage}/step"] = step
        self.wandb_run.log(payload)

    def finish(self, failed: bool = False) -> None:
        """Close the file and finish the wandb run (exit code 1 when the run failed).

        wandb-core completes the offline log in the background, at the latest when the
        process exits: ``wandb sync <run_dir>/wandb/offline-run-*`` after that.
        """
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
            self.wandb_run = None
        self._file.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(failed=exc_type is not None)
