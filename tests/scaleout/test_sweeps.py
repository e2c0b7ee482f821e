"""Sweeps end to end: failure isolation and summary, preemption + requeue.

The sweeps run the real CLI with Hydra's basic launcher and with the real submitit local executor
(``hydra/launcher=local``); preemption is simulated the way SLURM does it: the job's process gets
SIGUSR2 (submitit's preemption signal), submitit's handler calls the launcher's ``checkpoint``
and requeues the same job, which reruns ``labelfree-train`` and resumes from ``last.pt``.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from labelfree.rundir import RunDir

TIMING_KEYS = {"wall_s", "eval_s"}


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _sweep_cli(tmp_path, *args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline"}
    return subprocess.Popen(
        [sys.executable, "-m", "labelfree.train", "-m", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_failing_jobs_do_not_stop_the_sweep_and_are_summarised(tmp_path, tiny_overrides, launcher):
    """A bad override value (refused at start-up) and a diverged run beside a good job.

    The submitit variant runs the two failing jobs only, each as a 2-task DDP job (the SLURM way:
    submitit tasks, gloo on CPU): the failures stop both ranks without a hang. (The preemption
    test below runs submitit jobs to completion.)
    """
    lrs = ["0.3", "1e12", "abc"] if launcher == "basic" else ["1e12", "abc"]
    args = [*tiny_overrides, f"method.optimizer.lr={','.join(lrs)}", f"paths.output_dir={tmp_path}"]
    args += ["hydra.sweep.subdir=job${hydra.job.num}"]  # short job directories
    if launcher == "local":
        args += ["hydra/launcher=local", "hydra.launcher.tasks_per_node=2"]
        args += ["trainer.distributed.timeout_min=1"]  # a rank left waiting fails within a minute
    proc = _sweep_cli(tmp_path, *args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    sweep = tmp_path / "sweeps" / "adhoc"
    job = {lr: sweep / f"job{i}" for i, lr in enumerate(lrs)}  # Hydra numbers jobs in order
    status = {lr: RunDir(path).read_status() for lr, path in job.items()}
    expected = {"diverged": 1, "failed": 1}
    if launcher == "basic":
        expected["completed"] = 1
        assert status["0.3"]["status"] == "completed"
        assert [r["epoch"] for r in read_jsonl(job["0.3"] / "metrics.jsonl")] == [0, 1, 2]
    assert status["1e12"]["status"] == "diverged"
    assert status["1e12"]["world_size"] == (1 if launcher == "basic" else 2)
    assert "train/loss became" in status["1e12"]["error"]
    assert status["abc"]["status"] == "failed"
    assert status["abc"]["error"].startswith("method.optimizer.lr='abc' must be a positive number")
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["counts"] == expected
    failed = {j["run_dir"]: j for j in summary["not_completed"]}
    assert set(failed) == {str(job["1e12"]), str(job["abc"])}
    assert "method.optimizer.lr=abc" in failed[str(job["abc"])]["overrides"]
    completed = expected.get("completed", 0)
    assert f"Sweep done: {completed} of {len(lrs)} job(s) completed" in out
    assert "failed: method.optimizer.lr='abc' must be a positive number" in out
    assert (sweep / "sweep_summary.md").is_file()


@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes_exactly(
    tmp_path, tiny_overrides, wandb_run_files, monkeypatch
):
    """submitit local launcher, 2-job sweep (W&B offline): the job 'preempted' gets SIGUSR2 after
    its first epoch; submitit requeues it; its records equal those of the uninterrupted twin, each
    epoch once, and its W&B run id survives the requeue."""
    from labelfree.analysis.wandb_source import records_from_history

    secret = "sk" + "0123456789abcdef" * 2 + "fake-api-key"
    args = [*tiny_overrides, "trainer.epochs=3", "logger=wandb", f"paths.output_dir={tmp_path}"]
    args += ["hydra/launcher=local", "run_name=uninterrupted,preempted"]
    monkeypatch.setenv("WANDB_API_KEY", secret)  # WANDB_MODE=offline wins; the key must not leak
    proc = _sweep_cli(tmp_path, *args)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    sweep = tmp_path / "sweeps" / "adhoc"
    run = RunDir(sweep / "preempted")
    deadline, signalled = time.time() + 400, None
    while time.time() < deadline and proc.poll() is None:
        status = run.read_status() if run.run_json_path.exists() else {}
        if (status.get("last_epoch") or 0) >= 1:
            signalled = status
            os.kill(status["pid"], signal.SIGUSR2)  # what SLURM sends before preempting
            break
        time.sleep(0.2)
    assert signalled is not None, "the job never finished its first epoch"
    assert signalled["last_epoch"] < 3
    proc.wait(timeout=500)
    reader.join(timeout=10)
    out = "".join(output)
    assert proc.returncode == 0, out[-4000:]

    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "Caught signal SIGUSR2" in logs
    assert "this job is preempted" in logs
    assert "Requeued job" in logs
    final = run.read_status()
    assert final["status"] == "completed"
    assert final["last_epoch"] == 3
    assert final["pid"] != signalled["pid"]  # a new process finished the run
    preempted = read_jsonl(sweep / "preempted" / "metrics.jsonl")
    uninterrupted = read_jsonl(sweep / "uninterrupted" / "metrics.jsonl")
    assert [r["epoch"] for r in preempted] == [0, 1, 2, 3]  # nothing lost, nothing twice
    assert strip_timing(preempted) == strip_timing(uninterrupted)

    # W&B: the same run id before and after the requeue, two offline segments, full history
    assert final["wandb_id"] == signalled["wandb_id"]
    segments = sorted((sweep / "preempted" / "wandb").glob(f"offline-run-*-{final['wandb_id']}"))
    assert len(segments) == 2
    rows, config, ids = wandb_run_files(segments)
    assert ids == {final["wandb_id"]}
    assert config["run_name"] == "preempted"
    assert config["method"]["name"] == "simclr"
    assert records_from_history(rows) == preempted
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 2}
    for path in tmp_path.rglob("*"):  # the API key is in no config dump, log or W&B file
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
