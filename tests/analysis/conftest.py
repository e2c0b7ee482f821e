"""Synthetic run directories with known answers for the analysis tests.

``make_records`` builds evaluation records where
- ``lf/silhouette`` is a strictly increasing function of ``sup/linear_probe_acc`` (Spearman 1);
- ``lf/kmeans_agreement`` is independent noise (Spearman near 0);
- ``lf/entropy`` decreases with training, except a spike at epoch 1 (an outlier);
- ``sup/kmeans_gt_ami`` is a noisy increasing function of accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest


def make_records(epochs: int = 20, *, seed: int = 0, offset: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for epoch in range(epochs + 1):
        acc = 0.1 + offset + 0.8 * (1 - math.exp(-epoch / 6)) + rng.normal(0, 0.02)
        entropy = 8.0 - 0.1 * epoch + rng.normal(0, 0.02) + (3.0 if epoch == 1 else 0.0)
        records.append(
            {
                "epoch": epoch,
                "step": epoch * 10,
                "wall_s": 1.0 + epoch,
                "eval_s": 0.5,
                "train/loss": None if epoch == 0 else 5.0 - 0.1 * epoch,
                "lf/silhouette": acc**3 + 0.1,
                "lf/kmeans_agreement": float(rng.random()),
                "lf/entropy": entropy,
                "sup/kmeans_gt_ami": 0.5 * acc + rng.normal(0, 0.05),
                "sup/linear_probe_acc": acc,
            }
        )
    return records


def write_run(
    directory: Path,
    *,
    name: str | None = None,
    method: str = "simclr",
    arch: str = "small_cnn",
    data: str = "digits",
    seed: int = 0,
    status: str = "completed",
    epochs: int = 20,
    records: list[dict] | None = None,
    run_json: bool = True,
    error: str | None = None,
    truncate_last: bool = False,
    config: dict | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """Write a run directory like labelfree-train does (run.json, metrics.jsonl, .hydra/)."""
    directory.mkdir(parents=True, exist_ok=True)
    records = make_records(epochs, seed=seed) if records is None else records
    lines = [json.dumps(r) for r in records]
    text = "\n".join(lines) + "\n"
    if truncate_last:
        text = "\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2]
    (directory / "metrics.jsonl").write_text(text)
    (directory / ".hydra").mkdir(exist_ok=True)
    (directory / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (directory / "checkpoints").mkdir(exist_ok=True)
    if run_json:
        info = {
            "name": name or f"{method}-{arch}-s{seed}",
            "method": method,
            "arch": arch,
            "data": data,
            "seed": seed,
            "status": status,
            "epochs": epochs,
            "last_epoch": records[-1]["epoch"] if records else None,
            "experiment": "synthetic",
            "error": error,
            "config": {"seed": seed} if config is None else config,
        }
        if overrides is not None:
            info["identity"] = {"overrides": overrides, "hash": "synthetic"}
        (directory / "run.json").write_text(json.dumps(info))
    return directory


def build_tree(root: Path) -> Path:
    """A Hydra-multirun-like tree: 2 methods x 2 seeds on small_cnn, simclr on a 2nd arch,
    and five damaged or incomplete runs."""
    sweep = root / "multirun" / "2024-01-01" / "12-00-00"
    job = 0

    def next_dir() -> Path:
        nonlocal job
        job += 1
        return sweep / str(job - 1)

    for method, offset in (("simclr", 0.0), ("moco_v2", -0.05)):
        for seed in (0, 1):
            write_run(
                next_dir(),
                method=method,
                seed=seed,
                records=make_records(
                    20, seed=seed + (10 if method == "moco_v2" else 0), offset=offset
                ),
            )
    write_run(
        next_dir(),
        method="simclr",
        arch="resnet18",
        seed=0,
        records=make_records(20, seed=7, offset=0.05),
    )
    # Damaged / incomplete runs.
    write_run(next_dir(), method="simclr", seed=2, truncate_last=True)
    write_run(next_dir(), method="simclr", seed=3, run_json=False)
    write_run(
        next_dir(),
        method="simclr",
        seed=4,
        status="diverged",
        error="loss is NaN at epoch 3",
        records=make_records(3, seed=4),
    )
    write_run(
        next_dir(),
        method="moco_v2",
        seed=5,
        status="failed",
        error="CUDA out of memory",
        records=[],
    )
    write_run(
        next_dir(), method="moco_v2", seed=6, status="running", records=make_records(20, seed=6)[:8]
    )
    write_run(next_dir(), method="moco_v2", seed=7, records=[])
    return sweep


@pytest.fixture(scope="session")
def run_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree of ``build_tree`` (read-only: shared by the whole session)."""
    return build_tree(tmp_path_factory.mktemp("runs"))


@pytest.fixture(name="make_records")
def make_records_fixture():
    return make_records


@pytest.fixture(name="write_run")
def write_run_fixture():
    return write_run
