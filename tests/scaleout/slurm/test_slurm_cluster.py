"""Smoke tests against a real SLURM scheduler (``bash scripts/slurm_cluster.sh start``).

They check the scheduler features the SLURM sweeps rely on, without labelfree's training code:
batch jobs and accounting (``sacct``, which submitit reads job states from), submitit jobs
returning results, and a preemption signal (USR2) requeueing a job that then completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.slurm

# The job functions below are pickled by value: the jobs' Python cannot import this test module
# (pytest imports it with --import-mode=importlib, not from an importable package).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wait_until(predicate, timeout_s: float, what: str):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def sacct_states(job_id: str) -> list[str]:
    """Every state the accounting database has for the job's allocation, oldest first."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-D", "-j", str(job_id), "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def executor(folder: Path) -> submitit.AutoExecutor:
    # A fresh folder per test: job ids restart at 1 on a fresh cluster, and submitit names its
    # files by job id.
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=15, cpus_per_task=1, mem_gb=1)
    return ex


def test_sbatch_job_completes_and_is_accounted(slurm_cluster, tmp_path):
    out = tmp_path / "out.txt"
    job_id = slurm_cluster.sbatch(
        f"--output={out}", "--cpus-per-task=1", "--mem=100M",
        "--wrap", "echo hello from job $SLURM_JOB_ID",
    )  # fmt: skip
    wait_until(lambda: sacct_states(job_id) == ["COMPLETED"], 60, f"job {job_id} COMPLETED")
    assert out.read_text().strip() == f"hello from job {job_id}"


def add_in_slurm_job(a: int, b: int) -> dict:
    return {"sum": a + b, "job_id": os.environ.get("SLURM_JOB_ID"), "python": sys.executable}


def test_submitit_job_returns_its_result(slurm_cluster, tmp_path):
    job = executor(tmp_path).submit(add_in_slurm_job, 40, 2)
    slurm_cluster.track(job.job_id)
    wait_until(job.done, 60, f"submitit job {job.job_id}")
    # the function ran inside that SLURM job, with this interpreter (submitit uses sys.executable)
    assert job.result() == {"sum": 42, "job_id": job.job_id, "python": sys.executable}
    wait_until(lambda: sacct_states(job.job_id) == ["COMPLETED"], 30, "sacct: COMPLETED")


class SleepUntilRequeued(submitit.helpers.Checkpointable):
    """Waits for the preemption signal in its first run; returns at once once requeued."""

    def __call__(self, started: str) -> dict:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if restarts == 0:
            Path(started).write_text(os.environ["SLURM_JOB_ID"])
            time.sleep(300)  # submitit's USR2 handler requeues the job and exits from here
        return {"restarts": restarts, "job_id": os.environ["SLURM_JOB_ID"]}


def test_preempted_submitit_job_is_requeued_and_completes(slurm_cluster, tmp_path):
    started = tmp_path / "started"
    # timeout_min >= 11: submitit takes a USR2 later than min(0.8 x limit, limit - 10 min) for
    # the time limit (capped requeues), earlier for a preemption, which is what is tested here.
    job = executor(tmp_path).submit(SleepUntilRequeued(), str(started))
    slurm_cluster.track(job.job_id)
    wait_until(started.exists, 60, f"job {job.job_id} to start running")
    # the signal goes to the job's steps, where submitit's Python runs (not to the batch shell)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    wait_until(job.done, 90, f"job {job.job_id} to be requeued and finish")
    assert job.result() == {"restarts": 1, "job_id": job.job_id}  # same job, second run
    # one allocation ended by the requeue, the next one completed
    wait_until(lambda: sacct_states(job.job_id) == ["REQUEUED", "COMPLETED"], 30, "sacct history")
