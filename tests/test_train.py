"""End-to-end training on digits: records, resume equivalence, bad input, divergence."""

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial

import pytest

from labelfree.methods import METHODS
from labelfree.rundir import RunDir
from labelfree.train import train

RECORD_KEYS = {
    "epoch",
    "step",
    "wall_s",
    "eval_s",
    "train/loss",
    "lf/silhouette",
    "lf/kmeans_agreement",
    "sup/kmeans_gt_ami",
    "sup/linear_probe_acc",
}
TIMING_KEYS = {"wall_s", "eval_s"}


@pytest.fixture
def cli(run_module):
    return partial(run_module, "labelfree.train")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_epochs_write_valid_records(compose_train, tiny, tmp_path, method):
    cfg = compose_train(f"method={method}", *tiny)
    status = train(cfg, tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert status["status"] == "completed"
    assert status["last_epoch"] == 2
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert [r["step"] for r in records] == [0, 10, 20]  # 1347 // 128 steps per epoch
    for r in records:
        assert set(r) >= RECORD_KEYS, RECORD_KEYS - set(r)
        assert -1 <= r["lf/silhouette"] <= 1
        assert 0 <= r["sup/linear_probe_acc"] <= 1
        assert r["eval_s"] > 0
        assert r["wall_s"] >= r["eval_s"]
    assert records[0]["train/loss"] is None
    assert records[1]["train/loss"] > -10
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert json.loads((tmp_path / "run.json").read_text())["method"] == method
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4


@pytest.mark.slow
def test_interrupted_then_resumed_run_writes_identical_records(cli, tmp_path):
    args = [
        "trainer.epochs=5",
        "eval.schedule=every:1",
        "trainer.warmup_epochs=1",
        "method=moco_v2",
    ]
    cli(*args, f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path, check=True)

    run_dir = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelfree.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and (RunDir(run_dir).read_status().get("last_epoch") or 0) < 2:
        time.sleep(0.05)
    proc.send_signal(
        signal.SIGKILL
    )  # no chance to clean up: the checkpoint and records must already be safe
    proc.wait()
    status = RunDir(run_dir).read_status()
    assert status["status"] == "running"
    assert 2 <= status["last_epoch"] < 5

    cli(
        *args, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True
    )  # relaunch into the same directory
    full, resumed = (
        read_jsonl(tmp_path / "full" / "metrics.jsonl"),
        read_jsonl(run_dir / "metrics.jsonl"),
    )
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3, 4, 5]

    def strip(r):
        return {k: v for k, v in r.items() if k not in TIMING_KEYS}

    assert [strip(r) for r in resumed] == [strip(r) for r in full]
    assert RunDir(run_dir).read_status()["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.epochs=0"], "trainer.epochs=0 must be a positive integer"),
        (["trainer.batch_size=-4"], "trainer.batch_size=-4 must be a positive integer"),
        (
            ["trainer.batch_size=5000"],
            "trainer.batch_size=5000 is larger than the 1347 training images",
        ),
        (["data.test_per_class=3", "metrics.kmeans.k=40"], "metrics.kmeans.k=40"),
        (["data=imagefolder", "data.root=/no/such/folder"], "data.root=/no/such/folder"),
        (["eval.schedule=weekly"], "eval.schedule='weekly'"),
    ],
)
def test_bad_input_stops_at_startup_with_one_line(cli, tmp_path, overrides, message):
    proc = cli(*overrides, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_unknown_group_option_lists_choices(cli, tmp_path):
    proc = cli("method=simclar", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'method/simclar'" in proc.stderr
    for name in sorted(METHODS):
        assert name in proc.stderr


@pytest.mark.slow
def test_nan_loss_marks_run_diverged_and_keeps_records(compose_train, tiny, tmp_path):
    cfg = compose_train("method=simclr", "method.optimizer.lr=1e12", *tiny)
    status = train(cfg, tmp_path)
    assert status["status"] == "diverged"
    assert "train/loss became nan" in status["error"] or "train/loss became inf" in status["error"]
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0]


@pytest.mark.slow
def test_cfg_job_prints_composed_config(cli, tmp_path):
    proc = cli("--cfg", "job", "method=byol", cwd=tmp_path, check=True)
    assert "name: byol" in proc.stdout
    assert "schedule:" in proc.stdout
    assert "kmeans:" in proc.stdout


def test_slurm_job_names_the_job_as_squeue_does():
    from labelfree.train import slurm_job

    assert slurm_job({}) == {"slurm_job_id": None, "slurm_restart_count": None}
    array = {"SLURM_JOB_ID": "57", "SLURM_ARRAY_JOB_ID": "55", "SLURM_ARRAY_TASK_ID": "2"}
    assert slurm_job({**array, "SLURM_RESTART_COUNT": "1"}) == {
        "slurm_job_id": "55_2",
        "slurm_restart_count": 1,
    }
    assert slurm_job({"SLURM_JOB_ID": "9"}) == {"slurm_job_id": "9", "slurm_restart_count": 0}
