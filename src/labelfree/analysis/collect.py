"""Find training run directories and load them into one tidy table.

A run directory is any folder holding ``run.json`` or ``metrics.jsonl`` (see DESIGN.md). It can sit
anywhere below the roots: a Hydra multirun folder (``multirun/DATE/TIME/0``, ``/1`` ...) or any
tree. The tidy table has one row per run x evaluation with the run's identity columns
(:data:`RUN_COLUMNS`) followed by the record keys of ``metrics.jsonl``.

Every run that is skipped or only partly usable is reported in an issues table (written as
``skipped_runs.csv`` by ``labelfree-analyze``) with one row per problem:

============================  ========  ==========================================================
reason                        action    when
============================  ========  ==========================================================
``missing_run_json``          skipped   ``metrics.jsonl`` without ``run.json`` (no identity)
``unreadable_run_json``       skipped   ``run.json`` is not a JSON object
``missing_fields``            skipped   ``run.json`` lacks ``method``, ``arch`` or ``data``
``failed`` / ``diverged``     skipped   run status; the run's ``error`` is in ``detail``
``unknown_status``            skipped   status not one of :data:`STATUSES`
``running``, ``interrupted``  included  a run not finished; skipped with ``include_running=False``
``no_evaluations``            skipped   no usable record in ``metrics.jsonl``
``truncated_last_line``       included  last line cut mid-write; the good lines are kept
``bad_line``                  included  an unparsable line before the last one; dropped
``missing_epoch``             included  a record without ``epoch``; dropped
``duplicate_epoch``           included  an epoch evaluated twice; the last record is kept
``duplicate``                 skipped   the config of a run that got further (a copy of it)
============================  ========  ==========================================================
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from labelfree.config import config_hash
from labelfree.records import STATUSES, UNFINISHED, order_keys
from labelfree.rundir import RunDir

log = logging.getLogger(__name__)

#: Identity columns of the tidy table, in order; the record keys follow.
RUN_COLUMNS = (
    "run_dir",
    "name",
    "dataset",
    "arch",
    "method",
    "seed",
    "status",
    "experiment",
    "epochs",
)
#: Columns of the issues table (``skipped_runs.csv``).
ISSUE_COLUMNS = ("run_dir", "name", "status", "action", "reason", "detail")

_SKIP_DIRS = {"checkpoints", "wandb", "__pycache__"}


@dataclass
class Collection:
    """Result of :func:`collect_runs`.

    Attributes:
        runs: The tidy table, one row per run x evaluation, columns :data:`RUN_COLUMNS` then the
            record keys (``epoch``, ``step``, ``wall_s``, ``eval_s``, ``train/*``, ``lf/*``,
            ``sup/*``, others).
        issues: One row per skipped or incomplete run and per damaged file, columns
            :data:`ISSUE_COLUMNS`.
        n_found: Number of run directories found below the roots.
        configs: ``run_dir -> `` the resolved config saved in the run's ``run.json`` (``{}``
            when it saved none), for every loaded run.
        overrides: ``run_dir ->`` the run's result-relevant command-line overrides
            (``identity.overrides`` of ``run.json``, ``key=value`` strings).
    """

    runs: pd.DataFrame
    issues: pd.DataFrame
    n_found: int
    configs: dict[str, dict] = field(default_factory=dict)
    overrides: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_loaded(self) -> int:
        """Number of runs in the tidy table."""
        return int(self.runs["run_dir"].nunique()) if len(self.runs) else 0


@dataclass
class _RunLoad:
    """What loading one run directory produced."""

    records: list[dict] = field(default_factory=list)
    info: dict | None = None
    issues: list[dict] = field(default_factory=list)


def _natural_key(text: str) -> list:
    """Sort key that orders ``2`` before ``10`` (Hydra multirun job folders)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_run_dirs(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Find every run directory below one or several roots.

    A run directory is a folder that holds ``run.json`` or ``metrics.jsonl``. The walk does not
    descend into a run directory, nor into hidden folders (``.hydra``), ``checkpoints`` or
    ``wandb``. Overlapping roots are de-duplicated.

    Args:
        roots: A directory or a list of directories.

    Returns:
        Run directories, resolved, in natural sort order (``.../2`` before ``.../10``).

    Raises:
        FileNotFoundError: If a root does not exist or is not a directory.
    """
    if isinstance(roots, str | os.PathLike):
        roots = [roots]
    found: set[Path] = set()
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"runs path '{root}' does not exist or is not a directory. Pass runs=DIR "
                "(or runs=[DIR1,DIR2]) pointing at training output, e.g. a Hydra multirun "
                "folder such as multirun/2024-01-01/12-00-00."
            )
        for current, dirnames, filenames in os.walk(root):
            if "run.json" in filenames or "metrics.jsonl" in filenames:
                found.add(Path(current).resolve())
                dirnames[:] = []
                continue
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS
            )
    return sorted(found, key=lambda p: _natural_key(str(p)))


def read_metrics(run_dir: str | os.PathLike) -> tuple[list[dict], list[tuple[str, str]]]:
    """The records of a run directory's ``metrics.jsonl`` for analysis, and its problems.

    Parsed by :meth:`labelfree.rundir.RunDir.load_records` (a truncated last line or a bad line
    is dropped and reported); ``null`` becomes NaN (as ``NaN``/``Infinity`` already are).

    Args:
        run_dir: The run directory.

    Returns:
        The records (dicts), and a list of ``(reason, detail)`` problems, with reasons
        ``truncated_last_line`` and ``bad_line``.
    """
    records, problems = RunDir(run_dir).load_records()
    return [{k: (math.nan if v is None else v) for k, v in r.items()} for r in records], problems


def _field(info: dict, key: str) -> object:
    """A run.json field; a dict value (a config group) gives its ``name``."""
    value = info.get(key)
    if isinstance(value, dict):
        value = value.get("name")
    if value is None and isinstance(info.get("config"), dict):
        value = info["config"].get(key)
        if isinstance(value, dict):
            value = value.get("name")
    return value


def _issue(run_dir: Path, info: dict | None, action: str, reason: str, detail: str) -> dict:
    info = info or {}
    return {
        "run_dir": str(run_dir),
        "name": info.get("name") or run_dir.name,
        "status": info.get("status"),
        "action": action,
        "reason": reason,
        "detail": detail,
    }


def _load_run(run_dir: Path, *, include_running: bool) -> _RunLoad:
    """Load and validate one run directory (never raises on damaged files)."""
    load = _RunLoad()
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        load.issues.append(
            _issue(
                run_dir,
                None,
                "skipped",
                "missing_run_json",
                "metrics.jsonl without run.json: method, arch and dataset are unknown",
            )
        )
        return load
    try:
        info = RunDir(run_dir).read_status()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        info = error
    if not isinstance(info, dict):
        load.issues.append(
            _issue(run_dir, None, "skipped", "unreadable_run_json", f"run.json: {info}")
        )
        return load
    missing = [key for key in ("method", "arch", "data") if _field(info, key) is None]
    if missing:
        detail = f"run.json lacks {', '.join(missing)}"
        load.issues.append(_issue(run_dir, info, "skipped", "missing_fields", detail))
        return load
    status = info.get("status")
    if status in ("failed", "diverged"):
        detail = f"status {status}: {info.get('error') or 'no error message recorded'}"
        load.issues.append(_issue(run_dir, info, "skipped", status, detail))
        return load
    if status not in STATUSES:
        detail = f"unknown status {status!r}; expected one of: {', '.join(STATUSES)}"
        load.issues.append(_issue(run_dir, info, "skipped", "unknown_status", detail))
        return load
    if status in UNFINISHED:
        detail = (
            f"status {status} (last finished epoch {info.get('last_epoch')} of "
            f"{info.get('epochs')}): "
        )
        if include_running:
            load.issues.append(
                _issue(run_dir, info, "included", status, detail + "included as it stands")
            )
        else:
            load.issues.append(
                _issue(
                    run_dir,
                    info,
                    "skipped",
                    status,
                    detail + "skipped because include_running=false",
                )
            )
            return load
    metrics_path = run_dir / "metrics.jsonl"
    records, problems = read_metrics(run_dir)
    for reason, detail in problems:
        load.issues.append(_issue(run_dir, info, "included", reason, detail))
    without_epoch = [r for r in records if not isinstance(r.get("epoch"), int | float)]
    if without_epoch:
        detail = f"{len(without_epoch)} record(s) without a numeric 'epoch' dropped"
        load.issues.append(_issue(run_dir, info, "included", "missing_epoch", detail))
        records = [r for r in records if isinstance(r.get("epoch"), int | float)]
    by_epoch: dict[int, dict] = {}
    for record in records:
        by_epoch[int(record["epoch"])] = record
    if len(by_epoch) < len(records):
        detail = f"{len(records) - len(by_epoch)} duplicate epoch record(s); kept the last of each"
        load.issues.append(_issue(run_dir, info, "included", "duplicate_epoch", detail))
    if not by_epoch:
        detail = (
            "metrics.jsonl is missing"
            if not metrics_path.is_file()
            else "metrics.jsonl holds no complete evaluation record"
        )
        load.issues.append(_issue(run_dir, info, "skipped", "no_evaluations", detail))
        return load
    load.info = info
    load.records = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    return load


def _identity(info: dict) -> str | None:
    """A run's identity: data, arch, method, seed and the hash of its result-relevant config.

    None when ``run.json`` holds no config (:mod:`labelfree.config`).
    """
    if isinstance(info.get("config"), dict):
        digest = config_hash(info["config"])
    elif isinstance(info.get("identity"), dict) and info["identity"].get("hash"):
        digest = info["identity"]["hash"]
    else:
        return None
    fields = [_field(info, key) for key in ("data", "arch", "method")]
    return "-".join(map(str, [*fields, f"s{info.get('seed')}", digest]))


def _progress(load: _RunLoad) -> tuple:
    """How far a run got: completed first, then more evaluations, then the later epoch."""
    epochs = [int(r["epoch"]) for r in load.records]
    return (load.info.get("status") == "completed", len(epochs), max(epochs, default=-1))


def _drop_duplicates(loads: dict[Path, _RunLoad]) -> None:
    """Keep one run per identity (the most advanced); the others become ``duplicate`` issues.

    Two directories with the same result-relevant config are copies of one run (a copied sweep,
    a run relaunched under another directory): counting both would add a stale copy as a seed.
    """
    groups: dict[str, list[Path]] = {}
    for run_dir, load in loads.items():
        key = _identity(load.info) if load.info is not None else None
        if key is not None:
            groups.setdefault(key, []).append(run_dir)
    for key, members in groups.items():
        if len(members) < 2:
            continue
        kept = max(members, key=lambda d: _progress(loads[d]))  # ties: the first found
        for run_dir in members:
            if run_dir == kept:
                continue
            load = loads[run_dir]
            detail = f"same identity ({key}) as {kept}, which got further; kept that one"
            load.issues.append(_issue(run_dir, load.info, "skipped", "duplicate", detail))
            load.info, load.records = None, []


def collect_runs(
    roots: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    include_running: bool = True,
    progress: bool = True,
) -> Collection:
    r"""Collect every run directory below ``roots`` into one tidy table.

    Damaged or unusable runs never raise: they are listed in ``Collection.issues`` (and logged
    as warnings) with the reasons in this module's docstring.

    Args:
        roots: A directory or a list of directories to search (see :func:`find_run_dirs`).
        include_running: Keep runs whose status is ``running`` (a live run, or one killed
            before it could mark itself failed). Their correlations are still informative, so
            they are kept by default and reported as ``included``.
        progress: Show a tqdm bar while loading (only on a terminal).

    Returns:
        The :class:`Collection`.

    Raises:
        FileNotFoundError: If a root is missing, or no run directory is found below the roots.

    Examples:
        >>> import json, pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> info = {"name": "r", "method": "simclr", "arch": "small_cnn", "data": "digits",
        ...         "seed": 0, "status": "completed", "epochs": 1}
        >>> _ = (root / "run.json").write_text(json.dumps(info))
        >>> _ = (root / "metrics.jsonl").write_text(
        ...     '{"epoch": 0, "lf/entropy": 1.0}\n{"epoch": 1, "lf/entropy": 2.0}\n')
        >>> collect_runs(root, progress=False).runs[["method", "epoch", "lf/entropy"]]
           method  epoch  lf/entropy
        0  simclr      0         1.0
        1  simclr      1         2.0
    """
    run_dirs = find_run_dirs(roots)
    if not run_dirs:
        shown = [str(r) for r in ([roots] if isinstance(roots, str | os.PathLike) else roots)]
        raise FileNotFoundError(
            f"No run directory (a folder holding run.json or metrics.jsonl) found below "
            f"{', '.join(shown)}. Point runs= at the output of labelfree-train "
            "(e.g. multirun/DATE/TIME or outputs/)."
        )
    log.info("Found %d run director%s", len(run_dirs), "y" if len(run_dirs) == 1 else "ies")
    rows: list[dict] = []
    issues: list[dict] = []
    configs: dict[str, dict] = {}
    overrides: dict[str, list[str]] = {}
    iterator = tqdm(run_dirs, desc="Loading runs", unit="run", disable=None if progress else True)
    loads = {run_dir: _load_run(run_dir, include_running=include_running) for run_dir in iterator}
    _drop_duplicates(loads)
    for run_dir, load in loads.items():
        for issue in load.issues:
            log.warning(
                "%s: %s (%s): %s",
                issue["run_dir"],
                issue["action"],
                issue["reason"],
                issue["detail"],
            )
        issues.extend(load.issues)
        if load.info is None:
            continue
        info = load.info
        config, run_identity = info.get("config"), info.get("identity")
        configs[str(run_dir)] = config if isinstance(config, dict) else {}
        if isinstance(run_identity, dict) and isinstance(run_identity.get("overrides"), list):
            overrides[str(run_dir)] = [str(o) for o in run_identity["overrides"]]
        identity = {
            "run_dir": str(run_dir),
            "name": info.get("name") or run_dir.name,
            "dataset": _field(info, "data"),
            "arch": _field(info, "arch"),
            "method": _field(info, "method"),
            "seed": info.get("seed"),
            "status": info.get("status"),
            "experiment": info.get("experiment"),
            "epochs": info.get("epochs"),
        }
        rows.extend({**identity, **record} for record in load.records)
    record_keys = order_keys(k for row in rows for k in row if k not in RUN_COLUMNS)
    runs = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *record_keys])
    if len(runs):
        runs["epoch"] = runs["epoch"].astype(int)
        for column in ("seed", "epochs"):
            values = pd.to_numeric(runs[column], errors="coerce")
            if ((values.dropna() % 1) == 0).all():
                runs[column] = values.astype("Int64")  # missing stays empty, not 0.0/NaN
    issues_frame = pd.DataFrame(issues, columns=list(ISSUE_COLUMNS))
    collection = Collection(
        runs=runs,
        issues=issues_frame,
        n_found=len(run_dirs),
        configs=configs,
        overrides=overrides,
    )
    skipped = issues_frame.loc[issues_frame["action"] == "skipped", "run_dir"].nunique()
    log.info(
        "Loaded %d of %d runs (%d evaluations); %d skipped",
        collection.n_loaded,
        len(run_dirs),
        len(runs),
        skipped,
    )
    return collection
