"""scripts/gpu_checks.sh, the GPU machine's one command; --dry-run runs every stage on the CPU."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_checks.sh"
STAGES = ("install", "data", "gpu-tests", "bench", "cifar10_gpu", "bench-compile", "bench-metrics")
#: The paper's metrics (metrics=paper), in every record.
PAPER_KEYS = {
    "epoch",
    "lf/silhouette",
    "lf/kmeans_agreement",
    "lf/entropy",
    "sup/kmeans_gt_ami",
    "sup/linear_probe_acc",
}


def _script(*args, env=None, timeout=60):
    env = {k: v for k, v in (env or os.environ).items() if k != "OUT"}
    env["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_prints_the_header_and_an_unknown_option_fails():
    proc = _script("--help")
    assert proc.returncode == 0
    assert "--dry-run" in proc.stdout
    assert "--prepare-wheels" in proc.stdout
    proc = _script("--dyr-run")
    assert proc.returncode == 2
    assert "unknown option --dyr-run" in proc.stderr


@pytest.mark.slow
def test_dry_run_packs_records_logs_and_a_summary(tmp_path, cifar10_archive):
    out = tmp_path / "out"
    proc = _script(
        "--dry-run", "--archive", str(cifar10_archive), str(out), timeout=1300
    )  # the dry run's own budget is 1200 s
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "bench_train.json",
        "logs.tar.gz",
        "records.tar.gz",
        "summary.md",
    ]
    summary = (out / "summary.md").read_text()
    assert "dry run: true" in summary
    for stage in STAGES:
        assert f"| {stage} | ok |" in summary, summary

    # both benchmark stages, merged: the CPU variants (the compile one from its own stage)
    bench = json.loads((out / "bench_train.json").read_text())
    assert bench["device"] == "cpu"
    assert bench["auto_choice"] == "batched"  # on a CPU
    rates = bench["images_per_s"]
    assert set(rates) == {
        "reference: PIL workers, fp32, NCHW",
        "ours: batched on device, fp32, NCHW",
        "ours: lightly PIL views in workers",
        "auto: trainer.augmentation=auto's choice (batched)",
        "ours + torch.compile",
    }
    assert all(rate > 0 for rate in rates.values())
    assert bench["epoch_s"] > 0  # --eval: one training epoch against one evaluation
    assert bench["eval_s"] > 0
    assert "| ours + torch.compile |" in summary

    with tarfile.open(out / "records.tar.gz") as tar:
        names = tar.getnames()
        runs = sorted(n for n in names if n.endswith("/run.json") and "/sweeps/cifar10_gpu/" in n)
        assert len(runs) == 3
        assert not [n for n in names if "checkpoints" in n or n.endswith((".pt", ".pkl"))]
        assert {"analysis/main_table.md", "bench_metrics.json"} <= set(names)
        methods = set()
        for name in runs:
            status = json.load(tar.extractfile(name))
            methods.add(status["config"]["method"]["name"])
            assert status["status"] == "completed"
            assert status["last_epoch"] == 2
            assert status["config"]["trainer"]["augmentation"] == "batched"  # auto, resolved
            assert status["identity"]["resolved"] == {"trainer.augmentation": "batched"}
            lines = tar.extractfile(name.replace("run.json", "metrics.jsonl")).read().splitlines()
            records = [json.loads(line) for line in lines]
            assert [r["epoch"] for r in records] == [0, 1, 2]
            for record in records:
                assert set(record) >= PAPER_KEYS, sorted(record)
                assert 0 <= record["sup/linear_probe_acc"] <= 1
            assert all("train/loss" in r for r in records[1:])
        assert methods == {"simclr", "moco_v2", "simsiam"}
        table = tar.extractfile("analysis/main_table.md").read().decode()
        assert all(f"| {method} |" in table for method in methods), table
        metrics_bench = json.load(tar.extractfile("bench_metrics.json"))
        assert metrics_bench
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = {Path(n).name for n in tar.getnames()}
    assert {"device.txt", "stages.tsv", "summary.md"} | {f"{s}.log" for s in STAGES} <= logs
