"""Checkpoints: atomic to write, safe to read, enough state to resume a run exactly.

A checkpoint holds only tensors, plain containers (dict, list, tuple) and primitive values (the
model and optimizer state dicts, positions, the loss and the resolved config as plain data), so
it loads with ``torch.load(weights_only=True)``: unpickling it can never run code. A file that
needs more than that, whatever it claims to be, is refused. Writing goes through
:func:`labelfree.rundir.write_atomic`, so a job killed mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from labelfree.rundir import write_atomic

#: Keys every checkpoint written by ``labelfree-train`` holds.
REQUIRED_KEYS = ("model", "optimizer", "epoch", "step", "config")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` to ``path`` atomically.

    Serialised in memory first, so a full disk raises a plain ``OSError`` ("no space left on
    device: <path>") and leaves no partial file.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getbuffer())


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file holds Python objects beyond tensors and plain data (refused before
            any of its code can run), is unreadable (truncated, empty, not a checkpoint) or lacks
            the keys of a labelfree checkpoint; the message names the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}: check the path (resume=..., checkpoint=...)."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err).lower() and "weights only" not in str(err).lower():
            raise _unreadable(path, err) from None
        detail = next(
            (line.strip() for line in str(err).splitlines() if "GLOBAL" in line),
            "it holds pickled Python objects",
        )
        raise ValueError(
            f"Checkpoint {path} was refused: loading it would run code ({detail}). labelfree "
            f"checkpoints hold only tensors and plain data; use a checkpoint written by "
            f"labelfree-train, or re-save your own as a plain state dict."
        ) from None
    except Exception as err:  # torch raises several types for a damaged file
        raise _unreadable(path, err) from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(
            f"Checkpoint {path} lacks {missing}: it was not written by labelfree-train."
        )
    return state


def restore(
    state: dict[str, Any],
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Load a checkpoint's weights (and optimizer state) into freshly built objects.

    Raises:
        ValueError: the weights do not fit the model its own config builds (an edited file, or
            one written by another version), naming the file, the first mismatch and the fix.
    """
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        first = " ".join(str(err).strip().splitlines()[:2])[:300]
        config = state.get("config") or {}
        built = ", ".join(
            f"{group}={(config.get(group) or {}).get('name')}" for group in ("arch", "method")
        )
        raise ValueError(
            f"Checkpoint {path} does not fit the model its own config builds ({built}): {first}. "
            f"The file was changed or written by another version: restore it, or start over "
            f"with resume=restart."
        ) from None


def _unreadable(path: Path, err: Exception) -> ValueError:
    first = str(err).splitlines()[0] if str(err) else ""
    return ValueError(
        f"Checkpoint {path} is unreadable ({type(err).__name__}: {first}). Restore it from a "
        f"copy, or start the run over with resume=restart (its records are moved aside, not "
        f"deleted)."
    )
