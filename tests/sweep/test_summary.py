"""The end-of-sweep summary: every job, its status and its error."""

import json
import time
from pathlib import Path

from labelfree.rundir import RunDir
from labelfree.sweep.summary import summarize_sweep, write_sweep_summary


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
