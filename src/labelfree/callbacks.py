"""Hydra callbacks: the end-of-sweep summary of which jobs failed and why.

Registered in ``conf/hydra/default.yaml`` (``hydra.callbacks.sweep_summary``), so every
``labelfree-train -m ...`` sweep ends, whatever its launcher (basic, ``hydra/launcher=local``,
``hydra/launcher=slurm``), with ``sweep_summary.json`` and ``sweep_summary.md`` in the sweep
directory and one log line per job that did not complete. The summary is read from each job's
``run.json`` (status, error, last finished epoch), which the job writes itself, so it works for
jobs that ran in other processes or on other machines.

A job that dies without returning (killed for memory, node failure, ``scancel``) makes submitit's
result collection raise in the launcher before ``on_multirun_end``; the other jobs run on. Write
the summary afterwards with ``python -m labelfree.callbacks SWEEP_DIR``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from labelfree.rundir import RunDir, write_json_atomic

log = logging.getLogger(__name__)

SUMMARY_NAME = "sweep_summary"
_CLOCK_SLACK_S = 5.0  # file times on shared file systems may lag the launcher's clock a little


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories of a sweep: folders below it holding ``.hydra/`` or ``run.json``."""
    found = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}
    found |= {p.parent for p in sweep_dir.glob("**/run.json")}
    skip = {".submitit", "wandb"}
    return sorted(p for p in found if not skip & set(p.relative_to(sweep_dir).parts))


def _started_at(job_dir: Path) -> float:
    marker = job_dir / ".hydra" / "overrides.yaml"
    return (marker if marker.exists() else job_dir / "run.json").stat().st_mtime


def summarize_sweep(sweep_dir: str | Path, *, since: float | None = None) -> dict[str, Any]:
    """Status of every job of a sweep, from the job directories' ``run.json`` files.

    Args:
        sweep_dir: the sweep directory (``hydra.sweep.dir``).
        since: only jobs started (``.hydra/`` written) at or after this time (``time.time()``);
            None: every job directory found.

    Returns:
        ``{"sweep_dir", "n_jobs", "counts": {status: n}, "jobs": [...], "not_completed": [...]}``;
        each job has ``run_dir``, ``name``, ``status`` (``completed``, ``diverged``, ``failed``,
        ``running``: interrupted, or ``unknown``: no ``run.json``), ``error``, ``last_epoch``,
        ``epochs`` and ``overrides``.
    """
    sweep_dir = Path(sweep_dir)
    jobs = []
    for job_dir in _job_dirs(sweep_dir):
        if since is not None and _started_at(job_dir) < since - _CLOCK_SLACK_S:
            continue
        status = RunDir(job_dir).read_status()
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        jobs.append(
            {
                "run_dir": str(job_dir),
                "name": status.get("name") or job_dir.name,
                "status": status.get("status", "unknown"),
                "error": status.get("error"),
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
    tmp = sweep_dir / f".{SUMMARY_NAME}.md.tmp"
    tmp.write_text(_markdown(summary))
    tmp.replace(sweep_dir / f"{SUMMARY_NAME}.md")
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
    """Hydra callback: mark jobs that raised as failed; summarise the sweep at its end.

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
        """A job whose task raised is marked failed in its ``run.json`` (runs in the job)."""
        if job_return.status != JobStatus.FAILED:
            return
        error = job_return._return_value  # the exception; .return_value would re-raise it
        run = RunDir(config.hydra.runtime.output_dir)
        if run.read_status().get("status") != "failed":
            message = str(error).splitlines()[0] if str(error) else ""
            run.update_status(status="failed", error=f"{type(error).__name__}: {message}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write and log the summary; exit 1 if asked to and a job did not complete."""
        summary = write_sweep_summary(config.hydra.sweep.dir, since=self.started)
        if self.fail_on_error and summary["not_completed"]:
            sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m labelfree.callbacks SWEEP_DIR")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = write_sweep_summary(sys.argv[1])
    print(_markdown(result), end="")
