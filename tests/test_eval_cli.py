"""labelfree-eval on small embeddings files: the real console entry point, in a subprocess."""

import json
import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import labelfree
from labelfree.eval import format_table, load_arrays, run_eval
from labelfree.metrics import compute_metrics

CONF = Path(labelfree.__file__).parent / "conf"


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 700)
    z = (3 * rng.normal(size=(4, 24))[y] + rng.normal(size=(700, 24))).astype(np.float32)
    np.save(tmp_path / "z.npy", z[:300])
    np.save(tmp_path / "y.npy", y[:300])
    np.savez(
        tmp_path / "split.npz",
        embeddings=z[:300],
        labels=y[:300],
        train_embeddings=z[300:],
        train_labels=y[300:],
    )
    return tmp_path, z, y


@pytest.fixture
def eval_cli(run_module):
    return partial(run_module, "labelfree.eval")


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def test_cli_without_labels_writes_label_free_keys_only(eval_cli, files):
    tmp, z, _ = files
    proc = eval_cli("embeddings=z.npy", "metrics.kmeans.k=4", "output=out/m.json", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp / "out" / "m.json").read_text())
    assert list(result) == ["lf/silhouette", "lf/kmeans_agreement", "lf/entropy", "eval_s"]
    assert "lf/silhouette" in proc.stdout
    assert "metric" in proc.stdout
    cfg = _compose("metrics.kmeans.k=4").metrics
    expected = compute_metrics(z[:300], config=cfg, seed=0)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12)


def test_cli_with_labels_adds_label_keys(eval_cli, files):
    tmp, z, y = files
    proc = eval_cli("embeddings=z.npy", "labels=y.npy", "output=m.json", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp / "m.json").read_text())
    # no train split: the probe is skipped, AMI to the labels is there
    assert list(result) == [
        "lf/silhouette",
        "lf/kmeans_agreement",
        "lf/entropy",
        "sup/kmeans_gt_ami",
        "eval_s",
    ]
    assert 0.9 < result["sup/kmeans_gt_ami"] <= 1.0


def test_cli_reports_config_errors_in_one_line(eval_cli, files):
    tmp, _, _ = files
    proc = eval_cli("embeddings=z.npy", cwd=tmp)  # no labels and kmeans.k=null
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "labelfree-eval: error: metrics.kmeans.k=null means 'the number of classes', but no "
        "labels are available to count them: set metrics.kmeans.k to the number of clusters."
    ]
    assert not (tmp / "metrics.json").exists()


def test_run_eval_npz_full_suite(files, monkeypatch):
    tmp, z, y = files
    monkeypatch.chdir(tmp)
    out = run_eval(_compose("embeddings=split.npz", "metrics=full", "device=cpu"))
    written = json.loads((tmp / "metrics.json").read_text())
    assert set(written) == set(out)
    assert len(written) == 13  # 13 metrics but LiDAR (no views) + eval_s
    assert "lf/lidar" not in written
    assert written["sup/kmeans_gt_ami"] > 0.9
    assert written["sup/linear_probe_acc"] > 0.9


def test_run_eval_input_errors(files, monkeypatch):
    tmp, _, _ = files
    monkeypatch.chdir(tmp)
    with pytest.raises(ValueError, match="Pass exactly one of embeddings="):
        run_eval(_compose())
    with pytest.raises(FileNotFoundError, match="embeddings file not found"):
        run_eval(_compose("embeddings=missing.npy"))
    np.savez(tmp / "bad.npz", feats=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"holds arrays \['feats'\] but no 'embeddings'"):
        run_eval(_compose("embeddings=bad.npz"))
    (tmp / "z.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="must be a .npy or .npz file"):
        run_eval(_compose("embeddings=z.csv"))
    np.save(tmp / "short.npy", np.zeros(299, dtype=int))
    with pytest.raises(ValueError, match="labels has 299 entries but the embeddings have 300"):
        run_eval(_compose("embeddings=z.npy", "labels=short.npy"))


def test_load_arrays_npy_overrides_npz(files):
    tmp, _, y = files
    np.save(tmp / "y2.npy", (y[:300] + 1) % 4)
    arrays = load_arrays(str(tmp / "split.npz"), labels=str(tmp / "y2.npy"))
    np.testing.assert_array_equal(arrays["labels"], (y[:300] + 1) % 4)
    assert arrays["train_embeddings"].shape == (400, 24)


def test_format_table_writes_nan():
    table = format_table({"lf/silhouette": 0.5, "lf/entropy": math.nan})
    assert table.splitlines()[2:] == ["lf/silhouette  0.5000", "lf/entropy     nan"]


@pytest.mark.slow
def test_checkpoint_branch(eval_cli, tmp_path):
    """labelfree-train writes a tiny run; labelfree-eval re-embeds its checkpoint."""
    train = subprocess.run(
        [sys.executable, "-m", "labelfree.train", "trainer.epochs=1", "trainer.batch_size=128",
         "trainer.warmup_epochs=0", "eval.schedule=every:1", f"paths.output_dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    (ckpt,) = tmp_path.glob("runs/*/checkpoints/last.pt")
    records = [json.loads(line) for line in (ckpt.parents[1] / "metrics.jsonl").open()]
    proc = eval_cli(f"checkpoint={ckpt}", "output=m.json", "device=cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    # the run's own metrics config and seed: the same values as the run's last record
    for key, value in result.items():
        if key != "eval_s":
            assert value == pytest.approx(records[-1][key], abs=1e-6), key
    full = eval_cli(
        f"checkpoint={ckpt}", "output=full.json", "device=cpu", "metrics=full", cwd=tmp_path
    )
    assert full.returncode == 0, full.stderr
    full_result = json.loads((tmp_path / "full.json").read_text())
    assert len(full_result) == 14  # every metric, LiDAR on views embedded here, + eval_s
    assert full_result["lf/lidar"] > 1


@pytest.mark.slow
def test_checkpoint_is_embedded_in_the_precision_the_run_was_evaluated_in(
    compose_train, tiny_overrides, tmp_path
):
    """A run trained and evaluated in bf16 is embedded in bf16 by labelfree-eval checkpoint=,
    through the same evaluator builder as training (it used to fall back to fp32)."""
    import torch

    from labelfree.build import build_evaluator, build_model
    from labelfree.eval import embed_checkpoint
    from labelfree.train import train

    cfg = compose_train(*tiny_overrides, "trainer.epochs=1", "trainer.precision=bf16")
    train(cfg, tmp_path)
    data = embed_checkpoint(tmp_path / "checkpoints" / "last.pt", device="cpu")
    assert data["precision"] == "bf16"
    dataset, model = build_model(cfg)
    model.load_state_dict(torch.load(tmp_path / "checkpoints" / "last.pt")["model"])
    device = torch.device("cpu")
    evaluator = build_evaluator(cfg, dataset, device=device)
    assert evaluator.precision == "bf16"
    expected = evaluator.embeddings(model)["test"]
    torch.testing.assert_close(data["embeddings"], expected, rtol=0, atol=0)
    evaluator.precision = "fp32"
    assert not torch.equal(data["embeddings"], evaluator.embeddings(model)["test"])


def test_cli_views_add_lidar(eval_cli, files):
    from labelfree.metrics import lidar

    tmp, z, _ = files
    rng = np.random.default_rng(1)
    views = (z[:40, None, :] + 0.5 * rng.normal(size=(40, 5, 24))).astype(np.float32)
    np.save(tmp / "v.npy", views)
    proc = eval_cli(
        "embeddings=z.npy", "views=v.npy", "metrics=full", "metrics.kmeans.k=4", cwd=tmp
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp / "metrics.json").read_text())
    assert result["lf/lidar"] == pytest.approx(lidar(views), rel=1e-12)
    assert "lf/l2_std" in result
    np.save(tmp / "flat.npy", views[:, 0])
    proc = eval_cli("embeddings=z.npy", "views=flat.npy", "metrics=full", cwd=tmp)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "labelfree-eval: error: views=flat.npy has shape (40, 24): expected (n_images, n_views, "
        "n_features) with n_images >= 2 and n_views >= 2, the embeddings of n_views augmented "
        "views of each image, e.g. np.save(path, np.stack([embed(augment(x)) for _ in "
        "range(q)], axis=1))."
    ]
