"""The Lightning callback on a real fit: lightly's SimCLR recipe on digits, W&B offline."""

import importlib
import json
import math
import sys
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from PIL import Image

from labelfree.analyze import analyze
from labelfree.integrations.lightning import LabelFreeCallback
from labelfree.rundir import RunDir

# lightly's SimCLRTransform with the digits options of conf/data/digits.yaml (no flips, no
# colour but brightness/contrast, small rotations); ToTensor gives [0, 1], no normalisation.
DIGITS_VIEW = {
    "input_size": 16,
    "cj_prob": 0.8,
    "cj_strength": 0.5,
    "cj_sat": 0.0,
    "cj_hue": 0.0,
    "min_scale": 0.5,
    "random_gray_scale": 0.0,
    "gaussian_blur": 0.0,
    "hf_prob": 0.0,
    "rr_prob": 0.5,
    "rr_degrees": 15.0,
    "normalize": None,
}


class SimCLR(pl.LightningModule):
    """lightly's examples/pytorch_lightning/simclr.py, with a small CNN for 16 px digits."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.projection_head = SimCLRProjectionHead(64, 64, 32)
        self.criterion = NTXentLoss()

    def forward(self, x):
        x = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(x)
        return z

    def training_step(self, batch, batch_index):
        (x0, x1) = batch[0]
        z0 = self.forward(x0)
        z1 = self.forward(x1)
        loss = self.criterion(z0, z1)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Digits(torch.utils.data.Dataset):
    """PIL images through lightly's transform, as LightlyDataset yields them: (views, target)."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index].numpy())
        return self.transform(image), 0


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear").clamp(0, 1)
    uint8 = (x[:, 0] * 255).round().to(torch.uint8)  # (N, 16, 16) for PIL
    y = torch.tensor(d.target)
    return uint8[:640], x[1347:], y[1347:], x[:100], y[:100]  # 640 training images: fast


def _embed(module, x):
    return module.backbone(x).flatten(start_dim=1)


@pytest.mark.slow
def test_callback_records_wandb_history_and_analysis(
    digits, tmp_path, wandb_run_files, compose_analyze
):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    train, heldout, heldout_y, few_x, few_y = digits
    pl.seed_everything(0, verbose=False)
    loader = torch.utils.data.DataLoader(
        Digits(train, SimCLRTransform(**DIGITS_VIEW)), batch_size=128, shuffle=True
    )
    run_dir = tmp_path / "runs" / "digits-cnn-simclr-s0"
    callback = LabelFreeCallback(
        heldout,
        metrics="full",
        labels=heldout_y,
        few_labels=(few_x, few_y),
        augment={k: v for k, v in DIGITS_VIEW.items() if k != "normalize"},  # ours, batched
        schedule="every:1",
        run_dir=run_dir,
        method="simclr",
        arch="cnn",
        data="digits",
        embed=_embed,
        loss_key="train_loss",
    )
    logger = WandbLogger(project="labelfree-test", save_dir=tmp_path, offline=True)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(SimCLR(), loader)
    run_id = logger.experiment.id
    wandb.finish()
    wandb.teardown()  # flush the offline run file, as a process exit would

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert records == callback.monitor.records
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert [r["step"] for r in records] == [0, 5, 10, 15]  # 640 images, batches of 128
    keys = [k for k in records[0] if k.startswith(("lf/", "sup/"))]
    assert keys == [
        "lf/silhouette",
        "lf/kmeans_agreement",
        "lf/entropy",
        "lf/rankme",
        "lf/alpha_req",
        "lf/nesum",
        "lf/uniformity",
        "lf/l2_std",
        "lf/lidar",
        "sup/kmeans_gt_ami",
        "sup/linear_probe_acc",
        "sup/knn_acc",
        "sup/fewshot_probe_acc",
    ]
    assert all(math.isfinite(r[k]) for r in records for k in keys)
    assert records[0]["train/loss"] is None
    assert all(r["train/loss"] > 0 for r in records[1:])  # the module's logged epoch loss
    status = RunDir(run_dir).read_status()
    assert status["status"] == "completed"
    assert status["epochs"] == 3  # trainer.max_epochs
    assert status["last_epoch"] == 3

    (offline,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    rows, _, ids = wandb_run_files([offline])
    assert ids == {run_id}
    history = [row for row in rows if "lf/silhouette" in row]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert [row["trainer/global_step"] for row in history] == [0, 5, 10, 15]
    for row, record in zip(history, records, strict=True):
        for key in keys:
            assert row[key] == pytest.approx(record[key], rel=1e-12), key
        assert row["eval_s"] == record["eval_s"]
    assert any("train_loss" in row for row in rows)  # the module's own logging still goes there

    fast = ("bootstrap.n_resamples=50", "figures.enabled=false")
    result = analyze(compose_analyze(f"runs={run_dir.parent}", f"output={tmp_path / 'a'}", *fast))
    runs = result.collection.runs
    assert len(runs) == 4
    assert set(runs[["dataset", "arch", "method"]].itertuples(index=False)) == {
        ("digits", "cnn", "simclr")
    }
    correlated = set(result.correlations["metric"])
    assert {"lf/lidar", "lf/l2_std", "lf/silhouette"} <= correlated


def test_callback_does_nothing_on_other_ranks(digits, tmp_path):
    _, heldout, *_ = digits
    callback = LabelFreeCallback(heldout, k=10, run_dir=tmp_path / "run", embed=_embed)
    rank1 = SimpleNamespace(is_global_zero=False, max_epochs=3, current_epoch=0, global_step=0)
    module = SimCLR()
    callback.on_train_start(rank1, module)
    callback.on_train_epoch_end(rank1, module)
    callback.on_train_end(rank1, module)
    assert callback.monitor is None
    assert not (tmp_path / "run").exists()


def test_callback_refuses_its_own_logger(digits):
    with pytest.raises(ValueError, match=r"logs to the trainer's loggers: drop logger="):
        LabelFreeCallback(digits[1], k=10, logger=print)


def test_without_pytorch_lightning_the_import_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)  # import fails as if missing
    monkeypatch.delitem(sys.modules, "labelfree.integrations.lightning")
    with pytest.raises(
        ImportError,
        match=r"^labelfree.integrations.lightning needs PyTorch Lightning: pip install "
        r"'labelfree\[lightning\]'",
    ):
        importlib.import_module("labelfree.integrations.lightning")
