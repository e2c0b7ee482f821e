"""The end-of-sweep summary of which jobs failed and why (a Hydra callback).

Registered in ``conf/hydra/default.yaml`` (``hydra.callbacks.sweep_summary``), so every
``labelfree-train -m ...`` sweep ends, whatever its launcher (basic, ``hydra/launcher=local``,
``hydra/launcher=slurm``), with ``sweep_summary.json`` and ``sweep_summary.md`` in the sweep
directory and one log line per job that did not complete. Each job reports how it ended into
``<sweep dir>/.jobs/`` (from its own process, so it works for jobs that ran on other machines);
the summary reads those reports and each run directory's ``run.json`` (last finished epoch).

A job that dies without returning (killed for memory, node failure, ``scancel``) makes submitit's
result collection raise in the launcher before ``on_multirun_end``; the other jobs run on. Write
the summary afterwards with ``python -m labelfree.sweep.summary SWEEP_DIR``: such a job's
``run.json`` still says ``running``, and as no process holds its lock (:class:`RunLock`), the
summary calls it ``killed``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from labelfree.rundir import RunDir, RunLock, write_atomic, write_json_atomic

log = logging.getLogger(__name__)

SUMMARY_NAME = "sweep_summary"
#: Folder of the sweep directory where each job reports how it ended.
REPORTS_DIR = ".jobs"
_CLOCK_SLACK_S = 5.0  # file times on shared file systems may lag the launcher's clock a little
#: Summary status of a run whose ``run.json`` says ``running`` while no process holds its lock.
KILLED = "killed"
KILLED_ERROR = (
    "run.json says running but no process holds its lock: cancelled, killed or lost with its node"
)


def run_status(run_dir: str | Path, status: str, error: str | None) -> tuple[str, str | None]:
    """A run's ``(status, error)`` as a summary reports it: ``running`` is checked.

    ``run.json`` says ``running`` from the start of training until the process that trains
    records how it stopped; a process that was killed outright (``scancel``, out of memory, a
    lost node) records nothing. Its lock tells them apart: held by a live process, the run is
    running; free, it is ``killed`` (:data:`KILLED`), with :data:`KILLED_ERROR` as the error.
    """
    if status == "running" and not RunLock.is_held(run_dir):
        return KILLED, error or KILLED_ERROR
    return status, error


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories of a sweep: folders below it holding ``.hydra/`` or ``run.json``."""
    found = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}
    found |= {p.parent for p in sweep_dir.glob("**/run.json")}
    return sorted(
        p
        for p in found
        if not any(
            part.startswith(".") or part == "wandb" for part in p.relative_to(sweep_dir).parts
        )
    )


def _started_at(job_dir: Path) -> float:
    marker = job_dir / ".hydra" / "overrides.yaml"
    return (marker if marker.exists() else job_dir / "run.json").stat().st_mtime


def job_reports(sweep_dir: str | Path, since: float | None = None) -> dict[str, dict]:
    """What each job said when it ended (:meth:`SweepSummary.on_job_end`), by run directory.

    Keys are absolute run directories; only reports written at or after ``since``.
    """
    reports: dict[str, dict] = {}
    for path in sorted((Path(sweep_dir) / REPORTS_DIR).glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if since is not None and report.get("time", 0) < since - _CLOCK_SLACK_S:
            continue
        reports[os.path.abspath(report["run_dir"])] = report
    return reports


def summarize_sweep(sweep_dir: str | Path, *, since: float | None = None) -> dict[str, Any]:
    """Status of every job of a sweep, from the jobs' own reports and ``run.json`` files.

    A job that ended reported its outcome into ``<sweep dir>/.jobs/``; that report wins, so a
    job refused before it owned its run (which then writes nothing into the run directory)
    is listed as failed with its error even when the directory holds an older, completed run.
    A job that died without reporting (killed for memory, node failure) is found through its
    run directory.

    Args:
        sweep_dir: the sweep directory (``hydra.sweep.dir``).
        since: only jobs started or reported at or after this time (``time.time()``); None:
            every job found.

    Returns:
        ``{"sweep_dir", "n_jobs", "counts": {status: n}, "jobs": [...], "not_completed": [...]}``;
        each job has ``run_dir``, ``name``, ``status`` (``completed``, ``diverged``, ``failed``,
        ``interrupted``, ``running``: its process holds the run's lock, ``killed``: run.json says
        running but no process holds the lock, or ``unknown``: no ``run.json``), ``error``,
        ``last_epoch``, ``epochs`` and ``overrides``.
    """
    sweep_dir = Path(sweep_dir)
    reports = job_reports(sweep_dir, since)
    dirs = {os.path.abspath(d): d for d in _job_dirs(sweep_dir)}
    dirs.update({run_dir: Path(run_dir) for run_dir in reports})
    jobs = []
    for key, job_dir in sorted(dirs.items()):
        report = reports.get(key)
        if (
            report is None
            and since is not None
            and (not job_dir.exists() or _started_at(job_dir) < since - _CLOCK_SLACK_S)
        ):
            continue
        try:
            status = RunDir(job_dir).read_status()
        except (OSError, ValueError):
            status = {}
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = (
            report.get("overrides")
            if report
            else yaml.safe_load(overrides_file.read_text())
            if overrides_file.exists()
            else status.get("overrides")
        )
        if report:
            outcome, error = report["status"], report.get("error")
        else:
            outcome, error = run_status(
                job_dir, status.get("status", "unknown"), status.get("error")
            )
        jobs.append(
            {
                "run_dir": key,
                "name": status.get("name") or job_dir.name,
                "status": outcome,
                "error": error,
                "last_epoch": status.get("last_epoch"),
                "epochs": status.get("epochs"),
                "overrides": overrides or [],
            }
        )
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return {
        "sweep_dir": str(sweep_dir),
        "n_jobs": len(jobs),
        "counts": counts,
        "jobs": jobs,
        "not_completed": [j for j in jobs if j["status"] != "completed"],
    }


def _markdown(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["counts"].items()))
    lines = [
        f"# Sweep summary: {summary['sweep_dir']}",
        "",
        f"{summary['n_jobs']} job(s): {counts or 'none found'}.",
        "",
        "| job | status | epochs done | overrides | error |",
        "|---|---|---|---|---|",
    ]
    for job in summary["jobs"]:
        done = "/".join("-" if v is None else str(v) for v in (job["last_epoch"], job["epochs"]))
        error = (job["error"] or "").replace("|", "\\|")
        overrides = " ".join(job["overrides"]).replace("|", "\\|")
        lines.append(f"| {job['name']} | {job['status']} | {done} | `{overrides}` | {error} |")
    return "\n".join(lines) + "\n"


def write_sweep_summary(sweep_dir: str | Path, *, since: float | None = None) -> dict[str, Any]:
    """Write ``sweep_summary.json`` and ``sweep_summary.md`` into ``sweep_dir``, log, return it.

    One log line for the counts, one warning per job that did not complete (with its error).
    """
    summary = summarize_sweep(sweep_dir, since=since)
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep_dir / f"{SUMMARY_NAME}.json", summary)
    write_atomic(sweep_dir / f"{SUMMARY_NAME}.md", _markdown(summary))
    completed = summary["counts"].get("completed", 0)
    log.info(
        "Sweep done: %d of %d job(s) completed; summary in %s",
        completed,
        summary["n_jobs"],
        sweep_dir / f"{SUMMARY_NAME}.md",
    )
    for job in summary["not_completed"]:
        log.warning(
            "Job %s %s: %s (%s)",
            job["name"],
            job["status"],
            job["error"] or "no error recorded",
            job["run_dir"],
        )
    return summary


class SweepSummary(Callback):
    """Hydra callback: each job reports how it ended; the sweep is summarised at its end.

    Args:
        fail_on_error: exit with status 1 after writing the summary when a job did not complete
            (default False: the sweep's exit status is 0 as long as the launcher finished).
    """

    def __init__(self, *, fail_on_error: bool = False):
        self.fail_on_error = fail_on_error
        self.started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Remember when the sweep started: the summary lists the jobs it ran."""
        self.started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Report the job's outcome into ``<sweep dir>/.jobs/`` (runs in the job's process).

        ``labelfree-train`` returns its run's status, or ``{"status": "failed", "error": ...}``
        when it stopped; the report is written beside the run directories, never into one.
        """
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        # Every task of a multi-task (DDP) job runs this; rank 0's outcome is the run's. RANK is
        # exported once the job's processes know their ranks, SLURM_PROCID by srun before that.
        if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) != "0":
            return
        result = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
        result = result if isinstance(result, dict) else {}
        report = {
            "job_num": int(config.hydra.job.num),
            "run_dir": str(Path(config.hydra.runtime.output_dir)),
            "status": result.get("status", "failed"),
            "error": result.get("error")
            if result
            else "the job raised before reporting (see its log)",
            "overrides": list(config.hydra.overrides.task),
            "time": time.time(),
        }
        write_json_atomic(
            Path(config.hydra.sweep.dir) / REPORTS_DIR / f"{report['job_num']}.json", report
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write and log the summary; exit 1 if asked to and a job did not complete."""
        summary = write_sweep_summary(config.hydra.sweep.dir, since=self.started)
        if self.fail_on_error and summary["not_completed"]:
            sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m labelfree.sweep.summary SWEEP_DIR")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = write_sweep_summary(sys.argv[1])
    print(_markdown(result), end="")
