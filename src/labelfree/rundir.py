"""The run directory contract (DESIGN.md): ``metrics.jsonl``, ``run.json``, ``checkpoints/``.

``metrics.jsonl`` is the source of truth: one flat JSON object per evaluation, appended and flushed
as soon as it exists. ``run.json`` says what the run is and how far it got. Every rewrite goes
through :func:`write_atomic` (a temporary file unique to the process, then a rename), so a reader
never sees half a file and two processes never share a temporary file.

Only the process that holds the run's lock (:class:`RunLock`, an OS file lock on ``run.lock``)
writes to the directory; a launch refused before it owns the run changes nothing in it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from labelfree.records import STATUSES

log = logging.getLogger(__name__)

#: Where ``resume=restart`` and dropped records put the files they replace (never deleted).
ASIDE_DIR = ".restarts"
LOCK_NAME = "run.lock"


def write_atomic(path: str | Path, data: bytes | str | Callable[[IO[bytes]], None]) -> None:
    """Write ``data`` (bytes, text, or a function writing to a binary file) to ``path`` atomically.

    The temporary file sits next to ``path`` with a name unique to this process, is flushed to
    disk, then renamed over ``path``: a crash leaves either the old or the new file, never a mix.
    On failure the temporary file is removed and the ``OSError`` names ``path``: a full disk
    says ``no space left on device: <path>``, a read-only folder ``cannot write <path>: ...``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on device: {path}") from None
        if isinstance(err, OSError) and err.errno is not None:  # read-only, permissions, ...
            raise OSError(
                err.errno, f"cannot write {path}: {err.strerror}; make {path.parent} writable"
            ) from None
        raise


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, json.dumps(payload, indent=2, default=str, allow_nan=True) + "\n")


def add_log_file(path: str | Path) -> logging.Handler:
    """Copy this process's log into ``path`` (appended), formatted like the console.

    Added by a command once it owns its output folder (a run's ``train.log``, the analysis'
    ``analyze.log``); remove it with ``logging.getLogger().removeHandler`` when done.
    """
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    console = next((h.formatter for h in root.handlers if h.formatter is not None), None)
    handler.setFormatter(console or logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    root.addHandler(handler)
    return handler


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
        self.lock_path = self.path / LOCK_NAME

    def load_records(self) -> tuple[list[dict], list[tuple[str, str]]]:
        """The complete records, tolerating damage, and a ``(reason, detail)`` per problem.

        Reasons: ``truncated_last_line`` (a write cut short; the lines before it are kept) and
        ``bad_line`` (an unparsable line before the last; dropped). No file: no records.
        """
        if not self.metrics_path.exists():
            return [], []
        with open(self.metrics_path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        records: list[dict] = []
        problems: list[tuple[str, str]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                record, message = None, f"{error.msg} at column {error.colno}"
            else:
                message = f"expected a JSON object, got {type(record).__name__}"
            if isinstance(record, dict):
                records.append(record)
            elif number == len(lines):
                detail = (
                    f"line {number} of {number} is cut off ({message}); kept the "
                    f"{len(records)} complete record(s) before it"
                )
                problems.append(("truncated_last_line", detail))
            else:
                problems.append(("bad_line", f"line {number} dropped ({message})"))
        return records, problems

    def read_records(self) -> list[dict]:
        """All complete records; a truncated last line (killed mid-write) is dropped, warning.

        Raises:
            ValueError: a damaged line before the last (not a write cut short): repair it.
        """
        records, problems = self.load_records()
        for reason, detail in problems:
            if reason == "bad_line":
                raise ValueError(f"{self.metrics_path}: {detail}: repair or remove that line.")
            log.warning("%s: %s", self.metrics_path, detail)
        return records

    def trained_epochs(self) -> list[int]:
        """Epochs after 0 that hold a record: evidence of training that a restart would lose."""
        return sorted({int(r["epoch"]) for r in self.read_records() if r.get("epoch", 0) > 0})

    def keep_records_through(self, last_epoch: int) -> list[dict]:
        """Keep the records up to ``last_epoch``, each epoch once; returns them.

        Called on resume: records after the checkpoint's epoch, or repeated epochs, cannot come
        from the history being resumed. They are not deleted but moved to
        ``.restarts/<time>/metrics.dropped.jsonl``. Nothing is written when nothing is dropped.
        """
        kept, dropped = _split_records(self.read_records(), last_epoch)
        if dropped:
            aside = self.aside_dir()
            write_atomic(aside / "metrics.dropped.jsonl", _jsonl(dropped))
            log.warning(
                "Moved %d record(s) after epoch %d or repeated to %s",
                len(dropped),
                last_epoch,
                aside,
            )
            write_atomic(self.metrics_path, _jsonl(kept))
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
        status = {**self.read_status(), **fields, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.run_json_path, status)
        return status

    def aside_dir(self) -> Path:
        """A new, timestamped folder under ``.restarts/`` for files that are replaced."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.path / ASIDE_DIR / stamp
        n = 1
        while path.exists():
            n += 1
            path = self.path / ASIDE_DIR / f"{stamp}-{n}"
        path.mkdir(parents=True)
        return path

    def move_aside(self) -> Path | None:
        """Move every file of the run (all but the lock and earlier asides) to a new aside folder.

        What ``resume=restart`` does before starting over; returns the folder (None if empty).
        """
        entries = (
            [p for p in self.path.iterdir() if p.name not in (LOCK_NAME, ASIDE_DIR)]
            if self.path.is_dir()
            else []
        )
        if not entries:
            return None
        aside = self.aside_dir()
        for entry in entries:
            shutil.move(str(entry), aside / entry.name)
        return aside


class ReadOnlyRunDir(RunDir):
    """The run directory as DDP ranks other than 0 see it: they read it, rank 0 writes it.

    ``keep_records_through`` and ``update_status`` return what rank 0 will write without writing
    it; ``append_record`` does nothing.
    """

    def keep_records_through(self, last_epoch: int) -> list[dict]:
        """The records rank 0 keeps on resume (nothing is rewritten here)."""
        return _split_records(self.read_records(), last_epoch)[0]

    def append_record(self, record: dict) -> None:
        """Rank 0 appends the records."""

    def update_status(self, **fields: Any) -> dict:
        """``run.json`` as rank 0 will write it (not written here)."""
        return {**self.read_status(), **fields}


def _split_records(records: list[dict], last_epoch: int) -> tuple[list[dict], list[dict]]:
    """Records up to ``last_epoch`` (first of each epoch), and the rest."""
    seen: set[int] = set()
    kept, dropped = [], []
    for record in records:
        if record["epoch"] <= last_epoch and record["epoch"] not in seen:
            seen.add(record["epoch"])
            kept.append(record)
        else:
            dropped.append(record)
    return kept, dropped


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


class RunLocked(RuntimeError):
    """Another live process holds the run's lock."""


class RunLock:
    """An exclusive OS file lock (``flock``) on ``<run dir>/run.lock``.

    The lock is the kernel's: it ends when its process ends, however it ends, so a lock left by
    a killed process (SIGKILL, a preempted node) is free again. While held, the file says who
    holds it (host, pid, start time); a release empties it again, so a launch that takes the
    lock and then stops (a refused resume, a missing dataset) leaves the file as it found it, and
    a non-empty file found free is the trace of a holder that died, reported as a warning.
    """

    #: How long :meth:`acquire` retries a lock whose holder has not said who it is: a reader
    #: probing it (:meth:`is_held`) for a moment, or a holder that is about to write its name.
    UNNAMED_HOLDER_WAIT_S = 1.0

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @staticmethod
    def is_held(run_dir: str | Path) -> bool:
        """Whether a live process holds the lock of ``run_dir`` (writes nothing, creates nothing).

        The lock is taken for an instant on a read-only descriptor and released at once; a run
        without ``run.lock`` has no holder. Reliable on local disks; on a network file system
        only where it passes ``flock`` between hosts (NFSv4; Lustre mounted with ``flock``).
        """
        import fcntl

        try:
            fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the probe's lock, if it got it
        return False

    def acquire(self) -> None:
        """Take the lock without waiting (creates an empty ``run.lock`` if there is none).

        Raises:
            RunLocked: another process holds it; the message names the holder and the choices.
        """
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.UNNAMED_HOLDER_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._read(fd)
                if not holder and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise RunLocked(
                    f"{self.path.parent} is being trained by {_describe(holder)}: wait for it to "
                    f"finish, stop it, or train elsewhere (hydra.run.dir=...)."
                ) from None
        self._fd = fd
        stale = self._read(fd)
        if stale:
            alive = stale.get("host") == socket.gethostname() and _pid_alive(stale.get("pid"))
            log.warning(
                "Taking over the lock of %s, which ended without releasing it%s.",
                _describe(stale),
                " (that pid now belongs to another process)" if alive else "",
            )
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        """Empty the lock file (a clean end leaves no holder trace) and release the lock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            return json.loads(text) if text else {}
        except (OSError, json.JSONDecodeError):
            return {"host": "?", "pid": "?", "started": "?"}


def _describe(info: dict) -> str:
    if not info:
        return "another process (no holder recorded)"
    return (
        f"pid {info.get('pid')} on {info.get('host')} (started {info.get('started')}, "
        f"lock file {LOCK_NAME})"
    )


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
