"""The run directory contract (DESIGN.md): ``metrics.jsonl``, ``run.json`` and ``checkpoints/``.

``metrics.jsonl`` is the source of truth: one flat JSON object per evaluation, appended and flushed
as soon as it exists. ``run.json`` says what the run is and how far it got; it is rewritten
atomically (temporary file + rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATUSES = ("running", "completed", "failed", "diverged")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    """JSON-friendly scalar: tensors become Python numbers; NaN stays NaN (json reads it)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return value
    return value


class RunDir:
    """Files of one training run under ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.run_json_path = self.path / "run.json"
        self.checkpoint_dir = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoint_dir / "last.pt"

    def read_records(self) -> list[dict]:
        """All complete records; a truncated last line (killed mid-write) is dropped, warning."""
        if not self.metrics_path.exists():
            return []
        records = []
        lines = self.metrics_path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    log.warning("Dropping a truncated last line of %s", self.metrics_path)
                    continue
                raise ValueError(
                    f"{self.metrics_path} line {i + 1} is not valid JSON: "
                    f"repair or remove that line."
                ) from None
        return records

    def keep_records_through(self, last_epoch: int) -> list[dict]:
        """Rewrite ``metrics.jsonl`` without records after ``last_epoch`` or repeated epochs.

        Called on resume: a run interrupted after appending a record but before its checkpoint
        would otherwise write that epoch twice.
        """
        seen, kept = set(), []
        for record in self.read_records():
            if record["epoch"] <= last_epoch and record["epoch"] not in seen:
                seen.add(record["epoch"])
                kept.append(record)
        tmp = self.metrics_path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.metrics_path)
        return kept

    def append_record(self, record: dict) -> None:
        """Append one evaluation record and flush it to disk."""
        self.path.mkdir(parents=True, exist_ok=True)
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_status(self) -> dict:
        """Contents of ``run.json`` ({} when absent)."""
        if not self.run_json_path.exists():
            return {}
        return json.loads(self.run_json_path.read_text())

    def update_status(self, **fields: Any) -> dict:
        """Merge ``fields`` into ``run.json`` (atomically) and return the new contents."""
        if fields.get("status", STATUSES[0]) not in STATUSES:
            raise ValueError(f"Unknown run status {fields['status']!r}; one of {STATUSES}.")
        self.path.mkdir(parents=True, exist_ok=True)
        status = {**self.read_status(), **fields, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.run_json_path, status)
        return status
