"""Weights & Biases end to end: real wandb offline (history, config, run id on resume)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb

from labelfree.analysis.wandb_source import records_from_history
from labelfree.train import train

SECRET = "wb" + "9" * 38  # a fake API key: 40 characters like a real one


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


@pytest.mark.slow
def test_offline_run_holds_config_and_history_and_resume_reuses_the_id(
    compose_train, tiny_overrides, tmp_path, monkeypatch, wandb_run_files, caplog
):
    """Real wandb, offline: the .wandb file holds the resolved config and every record; running
    the same run directory again (resume) reopens the same W&B run id."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_root"))
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(
        *tiny_overrides, "logger=wandb", "logger.project=lf-test", "experiment_name=demo"
    )
    run_dir = tmp_path / "run"
    with caplog.at_level("INFO", logger="labelfree.loggers"):
        status = train(cfg, run_dir)
    assert status["status"] == "completed"
    assert status["wandb_mode"] == "offline"
    run_id = status["wandb_id"]
    assert f"W&B is offline (WANDB_MODE=offline): run {run_id}" in caplog.text
    assert "wandb sync" in caplog.text
    # wandb's service process may still hold the end of the run file: a process exit (the CLI)
    # flushes it; in-process, shut the service down as that exit would
    wandb.teardown()
    (first,) = (tmp_path / "wandb_root" / "wandb").glob(f"offline-run-*-{run_id}")
    rows, config, ids = wandb_run_files([first])
    assert ids == {run_id}
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert records_from_history(rows) == records  # every record, the loss of every epoch
    assert [r["train/loss"] for r in rows if "train/loss" in r] == [
        r["train/loss"] for r in records[1:]
    ]
    assert config["method"]["name"] == "simclr"
    assert config["trainer"]["epochs"] == 2
    assert config["logger"]["group"] == "demo"  # resolved: group = experiment_name
    assert config["logger"]["run_name"] == "digits-small_cnn-simclr-s0"

    # wandb names offline segments by start time to the second: a relaunch within the same second
    # would reuse the first segment's directory, so wait for the next second
    time.sleep(1.1)
    again = train(cfg, run_dir)  # a relaunch into the same directory resumes the same W&B run
    assert again["wandb_id"] == run_id
    assert again["status"] == "completed"
    segments = sorted((tmp_path / "wandb_root" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(segments) == 2
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 3  # nothing evaluated twice
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def _stat(pid: int | str) -> tuple[str, str, int] | None:
    """``(command name, state, parent pid)`` of a process from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm, rest = text.split("(", 1)[1].rsplit(")", 1)
    state, ppid = rest.split()[:2]
    return comm, state, int(ppid)


def _state(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[1] if stat else None


def _children(pid: int, name: str) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").glob("[0-9]*")
        if (stat := _stat(p.name)) and stat[0] == name and stat[2] == pid
    ]


@pytest.mark.slow
def test_the_run_outlives_a_killed_wandb_service(tmp_path, tiny_overrides):
    """SLURM sends SIGTERM to every process of a job it cancels, preempts or requeues, and W&B's
    service (wandb-core, a Go program) dies of it even when started with SIGTERM ignored. The
    run goes on: one warning, every record in metrics.jsonl, status completed, exit status 0."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # wandb exports WANDB_SERVICE once this process has a service (the test above): the run
    # would use that one instead of starting its own
    env.pop("WANDB_SERVICE", None)
    proc = subprocess.Popen(
        # 100 epochs (~0.1 s each here): time enough to catch the run training after epoch 1
        # even when this process is not scheduled for a few seconds on a busy machine
        [sys.executable, "-m", "labelfree.train", *tiny_overrides, "trainer.epochs=100"]
        + ["eval.schedule=every:50", "logger=wandb", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = {}
        while (status.get("last_epoch") or 0) < 1:
            assert proc.poll() is None, "the run ended before the test could stop it"
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                status = json.loads((run_dir / "run.json").read_text())
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)  # so that the run is still training afterwards
        try:
            cores = _children(proc.pid, "wandb-core")
            assert len(cores) == 1, f"wandb-core processes of the run: {cores}; run.json: {status}"
            (core,) = cores
            os.kill(core, signal.SIGTERM)  # what SLURM sends every process of the job
            while _state(core) not in (None, "Z"):
                time.sleep(0.05)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed", status
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 50, 100]
    assert out.count("W&B failed at") == 1, out[-3000:]
    assert "metrics.jsonl holds every record" in out
    assert "Traceback" not in out, out[-3000:]
