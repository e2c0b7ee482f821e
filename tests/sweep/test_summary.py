"""The end-of-sweep summary: every job, its status and its error."""

import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from labelfree.rundir import RunDir, RunLock
from labelfree.sweep.summary import (
    KILLED,
    KILLED_ERROR,
    REPORTS_DIR,
    SweepSummary,
    summarize_sweep,
    write_sweep_summary,
)


def _job(root: Path, name: str, overrides: list[str], **status) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status:
        RunDir(job).update_status(name=name, **status)
    return job


def test_sweep_summary_lists_every_job_and_why_it_failed(tmp_path, caplog):
    _job(tmp_path, "a", ["seed=0"], status="completed", last_epoch=2, epochs=2)
    _job(tmp_path, "b", ["seed=1"], status="failed", error="trainer.batch_size=5000 is larger")
    _job(tmp_path, "c", ["seed=2"], status="diverged", error="train/loss became nan")
    _job(tmp_path, "d", ["seed=3"])  # started, never wrote run.json
    (tmp_path / ".submitit" / "123").mkdir(parents=True)
    with caplog.at_level("INFO"):
        summary = write_sweep_summary(tmp_path)
    assert summary["n_jobs"] == 4
    assert summary["counts"] == {"completed": 1, "failed": 1, "diverged": 1, "unknown": 1}
    by_name = {j["name"]: j for j in summary["jobs"]}
    assert by_name["b"]["error"] == "trainer.batch_size=5000 is larger"
    assert by_name["b"]["overrides"] == ["seed=1"]
    assert [j["name"] for j in summary["not_completed"]] == ["b", "c", "d"]
    assert json.loads((tmp_path / "sweep_summary.json").read_text()) == summary
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "4 job(s): 1 completed, 1 diverged, 1 failed, 1 unknown." in md
    assert "| b | failed | -/- | `seed=1` | trainer.batch_size=5000 is larger |" in md
    assert "| a | completed | 2/2 | `seed=0` |  |" in md
    assert "Sweep done: 1 of 4 job(s) completed" in caplog.text
    assert "Job b failed: trainer.batch_size=5000 is larger" in caplog.text
    # only the jobs started by this sweep
    assert summarize_sweep(tmp_path, since=time.time() + 60)["n_jobs"] == 0


def test_a_run_left_running_without_a_live_process_is_reported_killed(tmp_path):
    """run.json says running in both; one run's lock is held by a live process (running), the
    other's process was killed outright (scancel, OOM, a lost node): no holder, so killed."""
    _job(tmp_path, "live", ["seed=0"], status="running", last_epoch=1, epochs=5)
    _job(tmp_path, "dead", ["seed=1"], status="running", last_epoch=3, epochs=5)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from labelfree.rundir import RunLock\n"
         "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)",
         str(tmp_path / "live")],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        summary = write_sweep_summary(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    by_name = {j["name"]: j for j in summary["jobs"]}
    assert by_name["live"]["status"] == "running"
    assert by_name["live"]["error"] is None
    assert by_name["dead"]["status"] == KILLED
    assert by_name["dead"]["error"] == KILLED_ERROR
    md = (tmp_path / "sweep_summary.md").read_text()
    assert f"| dead | {KILLED} | 3/5 | `seed=1` | {KILLED_ERROR} |" in md
    assert not RunLock.is_held(tmp_path / "dead")
    assert (tmp_path / "dead" / "run.lock").exists() is False  # the probe wrote nothing


def test_only_rank_0_reports_a_multi_task_job(tmp_path, monkeypatch):
    """Every task of a DDP job runs Hydra's on_job_end; rank 0's report is the job's."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    config = OmegaConf.create(
        {
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "job": {"num": 0},
                "runtime": {"output_dir": str(tmp_path / "run")},
                "overrides": {"task": ["seed=0"]},
                "sweep": {"dir": str(tmp_path)},
            }
        }
    )
    job_return = JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED)
    job_return.return_value = {"status": "interrupted", "error": "rank 1 stopped with rank 0"}
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        SweepSummary().on_job_end(config, job_return)
        reports = list((tmp_path / REPORTS_DIR).glob("*.json"))
        assert len(reports) == (rank == "0"), rank
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_PROCID", "1")  # before the ranks are exported: srun's task id
    for report in reports:
        report.unlink()
    SweepSummary().on_job_end(config, job_return)
    assert not list((tmp_path / REPORTS_DIR).glob("*.json"))
