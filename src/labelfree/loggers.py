"""Experiment loggers, chosen by the ``logger`` config group.

``metrics.jsonl`` in the run directory is the source of truth whatever the logger; a logger mirrors
records elsewhere. Registry: ``LOGGERS[name]``; ``conf/logger/<name>.yaml`` holds its keyword
arguments.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class CSVLogger:
    """Local files only: ``metrics.csv`` (a spreadsheet view of metrics.jsonl) next to it.

    The CSV is rewritten from ``metrics.jsonl`` after each record, so its columns are the union of
    all record keys and it never disagrees with the JSON lines.
    """

    def __init__(self, *, run_dir: str | Path, config: Mapping[str, Any]):
        self.run_dir = Path(run_dir)

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Rewrite metrics.csv from metrics.jsonl."""
        records = [
            json.loads(line)
            for line in (self.run_dir / "metrics.jsonl").read_text().splitlines()
            if line
        ]
        columns = list(dict.fromkeys(k for r in records for k in r))
        with (self.run_dir / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)

    def log_train(self, values: Mapping[str, Any], *, step: int) -> None:
        """Training scalars go to metrics.jsonl with the evaluations; nothing more to do locally."""

    def finish(self, status: str) -> None:
        """Nothing to close."""


LOGGERS: dict[str, type] = {"csv": CSVLogger}


def build_logger(cfg: Mapping[str, Any], *, run_dir: str | Path, config: Mapping[str, Any]):
    """Instantiate ``LOGGERS[cfg["name"]]`` with the config's other keys as keyword arguments."""
    name = cfg["name"]
    if name not in LOGGERS:
        raise ValueError(f"Unknown logger '{name}'. Choose one of: {', '.join(sorted(LOGGERS))}.")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return LOGGERS[name](run_dir=run_dir, config=config, **kwargs)
