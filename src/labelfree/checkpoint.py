"""Atomic checkpoints: enough state to resume a run exactly.

A checkpoint is written to a temporary file in the same folder and renamed over ``last.pt``,
so a job killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is unreadable (truncated or not a checkpoint), naming the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}: check the path (resume=..., checkpoint=...)."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(
            f"Checkpoint {path} is unreadable ({type(err).__name__}: {err}). Delete it to "
            f"start the run over (metrics.jsonl is kept), or pass resume=<another last.pt>."
        ) from None
    missing = {"model", "optimizer", "epoch", "step", "config"} - set(state)
    if missing:
        raise ValueError(
            f"Checkpoint {path} lacks {sorted(missing)}: it was not written by labelfree-train."
        )
    return state
