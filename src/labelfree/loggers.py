"""Experiment loggers, chosen by the ``logger`` config group.

``metrics.jsonl`` in the run directory is the source of truth whatever the logger; a logger mirrors
records elsewhere. Registry: ``LOGGERS[name]``; ``conf/logger/<name>.yaml`` holds its keyword
arguments. A logger has three methods: ``log_record`` (one evaluation record, after it was
appended to ``metrics.jsonl``), ``log_train`` (training scalars once per epoch) and ``finish``,
and one attribute, ``status_fields``: what the trainer should keep in ``run.json`` for it (the
W&B run id, so that a resumed run reopens its W&B run). Loggers never write ``run.json``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import netrc
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from labelfree.records import LOSS_KEY, POSITION_KEYS, VALUE_PREFIXES
from labelfree.rundir import RunDir

log = logging.getLogger(__name__)

#: Config keys whose values are never sent to a logger (matched anywhere in a key, any case).
SECRET_KEY_PATTERN = re.compile(r"api_?key|token|secret|passw|credential", re.IGNORECASE)
WANDB_MODES = ("auto", "online", "offline", "disabled")


class CSVLogger:
    """Local files only: ``metrics.csv`` (a spreadsheet view of metrics.jsonl) next to it.

    The CSV is rewritten from ``metrics.jsonl`` after each record, so its columns are the union of
    all record keys and it never disagrees with the JSON lines.
    """

    status_fields: Mapping[str, Any] = {}

    def __init__(
        self, *, run_dir: str | Path, config: Mapping[str, Any], status: Mapping[str, Any]
    ):
        self.run = RunDir(run_dir)

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Rewrite metrics.csv from metrics.jsonl."""
        records = self.run.read_records()
        columns = list(dict.fromkeys(k for r in records for k in r))
        with (self.run.path / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)

    def log_train(self, values: Mapping[str, Any], *, step: int) -> None:
        """Training scalars go to metrics.jsonl with the evaluations; nothing more to do locally."""

    def finish(self, status: str) -> None:
        """Nothing to close."""


class NullLogger:
    """Logs nothing: the logger of DDP ranks other than 0 (rank 0 logs for the whole run)."""

    status_fields: Mapping[str, Any] = {}

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Nothing to do."""

    def log_train(self, values: Mapping[str, Any], *, step: int) -> None:
        """Nothing to do."""

    def finish(self, status: str) -> None:
        """Nothing to close."""


def scrub_secrets(config: Any) -> Any:
    """A copy of ``config`` with the value of every secret-like key replaced by ``"<redacted>"``.

    Keys matching :data:`SECRET_KEY_PATTERN` (``api_key``, ``WANDB_API_KEY``, ``token``,
    ``password``, ...) at any depth are redacted, so a key that slipped into the config never
    reaches a logger. (Never put it there: use ``WANDB_API_KEY`` or ``wandb login``.)

    Examples:
        >>> scrub_secrets({"a": 1, "env": {"WANDB_API_KEY": "abc"}, "tags": ["x"]})
        {'a': 1, 'env': {'WANDB_API_KEY': '<redacted>'}, 'tags': ['x']}
    """
    if isinstance(config, Mapping):
        return {
            k: "<redacted>" if SECRET_KEY_PATTERN.search(str(k)) else scrub_secrets(v)
            for k, v in config.items()
        }
    if isinstance(config, list | tuple):
        return [scrub_secrets(v) for v in config]
    return config


def wandb_api_key_available() -> bool:
    """Whether wandb can authenticate without asking.

    True with ``WANDB_API_KEY`` (or an identity token file) in the environment, or a
    ``wandb login`` entry in the netrc file for the W&B host (``WANDB_BASE_URL``, default
    api.wandb.ai). The key is never logged, stored or passed on by labelfree.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC", Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> tuple[str, str]:
    """The W&B mode to use and why: ``(mode, reason)``.

    ``auto`` -> ``WANDB_MODE`` if set, else online with an API key, else offline.

    Raises:
        ValueError: ``mode`` is not one of :data:`WANDB_MODES`.
    """
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={mode} is not one of: {', '.join(WANDB_MODES)}.")
    if mode != "auto":
        return mode, f"logger.mode={mode}"
    env = os.environ.get("WANDB_MODE")
    if env:
        return ("offline" if env == "dryrun" else env), f"WANDB_MODE={env}"
    if wandb_api_key_available():
        return "online", "a W&B API key is configured"
    return "offline", "no W&B API key: set WANDB_API_KEY or run `wandb login`"


class WandbLogger:
    """Mirror the run to Weights & Biases: resolved config, every evaluation record, the loss.

    ``metrics.jsonl`` stays the source of truth; W&B is a view of it. The x-axis of every metric
    is ``epoch`` (``define_metric``), so history rows need no monotonic W&B step and a resumed run
    continues its curves. The W&B run id is stored in ``run.json`` (``wandb_id``) on the first
    start; a resumed or requeued run (same run directory) reopens the same W&B run
    (``resume="allow"``). Without an API key, or with ``WANDB_MODE=offline``, the run is logged
    offline under ``<dir>/wandb/offline-run-*`` and the log says how to upload it
    (``wandb sync``). wandb is imported only when this logger is chosen (``logger=wandb``).

    Being a mirror, it never stops the run: if W&B fails while logging (its service process
    ``wandb-core`` gone, e.g. killed by the SIGTERM SLURM sends a job it cancels or preempts),
    one warning is logged and the rest of this launch is not mirrored; ``finish`` never raises.

    Args:
        run_dir: the run directory (the default place of ``wandb/``).
        config: the resolved run config, logged as the W&B config with secret-like keys redacted
            (:func:`scrub_secrets`).
        status: the run's ``run.json`` so far: a ``wandb_id`` there is reopened (a resume).
        project: W&B project.
        entity: W&B entity (user or team); None: the key's default entity.
        group: W&B group (default ``experiment_name``: one group per sweep).
        run_name: W&B display name (default: the run directory's name, data-arch-method-seed).
        tags: W&B tags.
        notes: W&B notes.
        job_type: W&B job type.
        mode: ``auto`` (``WANDB_MODE`` if set, else online when an API key is configured, else
            offline) | ``online`` | ``offline`` | ``disabled``.
        dir: folder under which wandb writes ``wandb/``; None: ``$WANDB_DIR`` if set, else the
            run directory.
        settings: extra ``wandb.Settings`` fields, e.g. ``{init_timeout: 300}``.

    Raises:
        ValueError: bad ``mode``, or wandb could not start the run (the message names the fix).
    """

    def __init__(
        self,
        *,
        run_dir: str | Path,
        config: Mapping[str, Any],
        status: Mapping[str, Any],
        project: str,
        entity: str | None = None,
        group: str | None = None,
        run_name: str | None = None,
        tags: Sequence[str] = (),
        notes: str | None = None,
        job_type: str = "train",
        mode: str = "auto",
        dir: str | None = None,  # noqa: A002 - wandb.init's name
        settings: Mapping[str, Any] | None = None,
    ):
        try:
            import wandb  # lazy: only runs with logger=wandb need it
        except ImportError:
            raise ValueError(
                "logger=wandb needs the wandb package: pip install 'labelfree[wandb]'."
            ) from None
        mode, reason = resolve_wandb_mode(mode)
        run_dir = Path(run_dir)
        run_id = status.get("wandb_id") or uuid.uuid4().hex[:12]
        root = Path(dir or os.environ.get("WANDB_DIR") or run_dir)
        root.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=project,
                entity=entity,
                group=group,
                name=run_name or run_dir.name,
                tags=[str(t) for t in tags],
                notes=notes,
                job_type=job_type,
                config=scrub_secrets(dict(config)),
                id=run_id,
                resume="allow",
                mode=mode,
                dir=str(root),
                settings=wandb.Settings(**dict(settings or {})),
            )
        except wandb.Error as err:
            raise ValueError(
                f"W&B could not start run {run_id} in project {project} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}): check the network and "
                f"WANDB_API_KEY / `wandb login`, or log offline with logger.mode=offline."
            ) from None
        self.run.define_metric("epoch")
        patterns = [f"{prefix}*" for prefix in VALUE_PREFIXES] + list(POSITION_KEYS[1:])
        for pattern in patterns:  # every record key is plotted against the epoch
            self.run.define_metric(pattern, step_metric="epoch")
        self.status_fields = {"wandb_id": run_id, "wandb_project": project, "wandb_mode": mode}
        self._wandb = wandb
        self._closed = False  # finished, or broken: nothing more is sent
        if mode == "offline":
            log.info(
                "W&B is offline (%s): run %s is saved in %s; upload it with `wandb sync %s`",
                reason,
                run_id,
                self.run.dir.removesuffix("/files"),
                Path(self.run.dir).parent.parent / f"offline-run-*-{run_id}",
            )
        else:
            log.info("W&B run %s (%s): %s", run_id, mode, getattr(self.run, "url", None))

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Log one evaluation record against its epoch (``train/loss`` comes from log_train)."""
        values = {k: v for k, v in record.items() if v is not None and k != LOSS_KEY}
        self._send(f"the record of epoch {record.get('epoch')}", lambda: self.run.log(values))

    def log_train(self, values: Mapping[str, Any], *, step: int) -> None:
        """Log the epoch's training scalars (``train/loss``, ``epoch``) and the optimizer step."""
        what = f"the loss of epoch {values.get('epoch')}"
        self._send(what, lambda: self.run.log({**values, "step": step}))

    def finish(self, status: str) -> None:
        """Close the W&B run (once; later calls do nothing); ``status`` goes to its summary.

        A run ``interrupted`` (Ctrl-C, a preemption or time-limit requeue) or still ``running``
        is marked preempting: it will be resumed under the same id. These and ``failed`` end
        with exit code 1; ``completed`` and ``diverged`` (a finished experiment) with 0. A
        failure to close is logged as a warning, never raised.
        """
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            self.run.summary["status"] = status
            if status in ("running", "interrupted"):
                self.run.mark_preempting()
            unfinished = status in ("running", "interrupted", "failed")
            self.run.finish(exit_code=1 if unfinished else 0)
            if status == "interrupted":
                # The process is about to end (a requeue, Ctrl-C): stop W&B's service too, so
                # that SLURM's SIGTERM finds none to kill (its exit hook would print a traceback).
                self._wandb.teardown()

        self._call(f"closing the run ({status})", close)

    def _send(self, what: str, call: Callable[[], None]) -> None:
        if not self._closed:
            self._closed = not self._call(what, call)

    def _call(self, what: str, call: Callable[[], None]) -> bool:
        """Run one W&B call; on failure warn (once per launch) and return False."""
        try:
            call()
        except Exception as err:  # W&B mirrors metrics.jsonl: its failure must not stop the run
            log.warning(
                "W&B failed at %s (%s: %s), its service process is probably gone (a SIGTERM "
                "from SLURM?); W&B run %s is not updated further by this launch; metrics.jsonl "
                "holds every record.",
                what,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
                self.status_fields["wandb_id"],
            )
            # Drop the dead connection now: wandb's exit hook would print its traceback later.
            with contextlib.suppress(Exception):
                self._wandb.teardown()
            return False
        return True


LOGGERS: dict[str, type] = {"csv": CSVLogger, "wandb": WandbLogger}


def build_logger(
    cfg: Mapping[str, Any],
    *,
    run_dir: str | Path,
    config: Mapping[str, Any],
    status: Mapping[str, Any],
):
    """Instantiate ``LOGGERS[cfg["name"]]`` with the config's other keys as keyword arguments.

    ``status`` is the run's ``run.json`` so far (a resumed run's logger reopens its own run).
    """
    name = cfg["name"]
    if name not in LOGGERS:
        raise ValueError(f"Unknown logger '{name}'. Choose one of: {', '.join(sorted(LOGGERS))}.")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return LOGGERS[name](run_dir=run_dir, config=config, status=status, **kwargs)
