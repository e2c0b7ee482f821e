"""labelfree.monitor: the suite of labelfree-train for any training loop, and its doc example."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from labelfree.evaluation import embed
from labelfree.loggers import CSVLogger
from labelfree.metrics import compute_metrics, lidar
from labelfree.monitor import METRICS_CONFIGS, LabelFreeMonitor, metrics_config
from labelfree.rundir import RunDir
from labelfree.views import ViewAugmentation

DOC = Path(__file__).parents[1] / "docs" / "monitor.md"


@pytest.fixture(scope="module")
def digits():
    """The held-out digits as float images (N, 1, 16, 16) in [0, 1], their labels, a train set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear")
    y = torch.tensor(d.target)
    return x[1500:], y[1500:], x[:200], y[:200]


class Net(torch.nn.Module):
    """A tiny encoder with dropout (train and eval mode differ) and a projector."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.5),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
        )
        self.projector = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.projector(self.backbone(x))


def _records(path):
    return [json.loads(line) for line in (Path(path) / "metrics.jsonl").open()]


def test_shipped_metrics_configs_equal_hydras_composition():
    assert METRICS_CONFIGS == ("full", "paper")
    with initialize_config_module("labelfree.conf", version_base="1.3"):
        for name in METRICS_CONFIGS:
            composed = compose("eval", overrides=[f"metrics={name}"]).metrics
            assert metrics_config(name) == dict(composed), name
    with pytest.raises(ValueError, match=r"Unknown metrics config 'fast'. Choose one of: full"):
        metrics_config("fast")


def test_records_are_the_suite_of_the_embeddings(digits, tmp_path):
    x, y, _, _ = digits
    model = Net()
    monitor = LabelFreeMonitor(x, epochs=4, schedule="every:2", k=10, run_dir=tmp_path / "run")
    assert [e for e in range(5) if monitor.is_scheduled(e)] == [0, 2, 4]
    record = monitor.maybe_evaluate(model, epoch=0)
    assert model.training, "the monitor must restore train mode"
    # model(x) (no embed/features method): the same suite on the same embeddings
    cfg = metrics_config("paper")
    cfg["kmeans"]["k"] = 10
    expected = compute_metrics(embed(model, x, normalize=None, features=model), config=cfg, seed=0)
    assert {k: v for k, v in record.items() if k.startswith("lf/")} == expected
    assert list(expected) == ["lf/silhouette", "lf/kmeans_agreement", "lf/entropy"]
    assert record["epoch"] == 0
    assert record["train/loss"] is None
    assert monitor.maybe_evaluate(model, epoch=1) is None  # not scheduled: nothing
    assert monitor.maybe_evaluate(model, epoch=0) is None  # done already
    assert monitor.maybe_evaluate(model, epoch=2, step=20, loss=1.5)["step"] == 20
    assert [r["epoch"] for r in _records(tmp_path / "run")] == [0, 2]
    status = RunDir(tmp_path / "run").read_status()
    assert status["status"] == "running"
    assert status["last_epoch"] == 2
    monitor.maybe_evaluate(model, epoch=4)
    assert RunDir(tmp_path / "run").read_status()["status"] == "completed"  # the last epoch


def test_no_gradient_and_mode_restored(digits):
    x = digits[0]
    model = Net().eval()
    seen = []

    def features(m, batch):
        seen.append((torch.is_grad_enabled(), m.training))
        return m.backbone(batch)

    record = LabelFreeMonitor(x, epochs=1, k=10, embed=features).evaluate(model, epoch=1)
    assert set(seen) == {(False, False)}
    assert not model.training  # eval mode was kept as found
    model.train()
    LabelFreeMonitor(x, epochs=1, k=10, embed=features).evaluate(model, epoch=1)
    assert model.training
    assert not any(p.grad is not None for p in model.parameters())
    assert record["eval_s"] > 0


def test_embedding_sources(digits):
    x = digits[0][:60]
    model = Net()
    cfg = {"name": "t", "compute": ["rankme"]}

    def rankme_of(z):
        return compute_metrics(z, config=cfg, seed=1)["lf/rankme"]

    model.eval()
    with torch.no_grad():
        backbone, projector = model.backbone(x), model(x)
    monitor = LabelFreeMonitor(x, epochs=1, metrics=cfg)
    assert monitor.evaluate(model, epoch=0)["lf/rankme"] == rankme_of(projector)  # model(x)
    fn = monitor.evaluate(lambda images: model.backbone(images), epoch=0)  # a plain function
    assert fn["lf/rankme"] == rankme_of(backbone)
    model.embed = lambda images: model.backbone(images)  # not a method: still model(x)
    assert monitor.evaluate(model, epoch=0)["lf/rankme"] == rankme_of(projector)
    del model.embed

    class WithEmbed(Net):
        def embed(self, images):
            return self.backbone(images)

    assert monitor.evaluate(WithEmbed(), epoch=0)["lf/rankme"] == rankme_of(backbone)
    with pytest.raises(ValueError, match="needs an nn.Module or a function images -> features"):
        monitor.evaluate("model", epoch=0)


def test_labels_and_few_labels_add_the_references(digits, tmp_path):
    x, y, fx, fy = digits
    logged = []
    monitor = LabelFreeMonitor(x, epochs=1, labels=y, few_labels=(fx, fy), logger=logged.append)
    record = monitor.maybe_evaluate(Net(), epoch=0)
    assert [k for k in record if k.startswith("sup/")] == [
        "sup/kmeans_gt_ami",
        "sup/linear_probe_acc",
    ]
    assert logged == [record]
    assert 0.1 < record["sup/linear_probe_acc"] <= 1
    with pytest.raises(ValueError, match=r"few_labels=\(images, labels\) .* pass their labels="):
        LabelFreeMonitor(x, epochs=1, k=10, few_labels=(fx, fy))
    with pytest.raises(ValueError, match=r"labels must hold one label per image \(297\)"):
        LabelFreeMonitor(x, epochs=1, labels=y[:10])


def test_without_labels_k_is_required_with_the_fix(digits):
    with pytest.raises(
        ValueError,
        match=r"^silhouette, kmeans_agreement cluster the embeddings with k-means, whose k "
        r"defaults to the number of classes, but no labels= were given: pass k=<number of",
    ):
        LabelFreeMonitor(digits[0], epochs=3)
    LabelFreeMonitor(digits[0], epochs=3, metrics={"name": "x", "compute": ["rankme"]})  # no k


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "log:5"}, r"^schedule='log:5' needs the planned number of epochs: pass "),
        ({"schedule": "weekly", "epochs": 3}, r"^schedule='weekly' is not understood: use "),
        ({"schedule": [2, 9], "epochs": 5}, r"^schedule has epochs \[9\] outside 0..epochs=5"),
        ({"epochs": -1}, r"^epochs=-1 must be an integer >= 0"),
        ({"metrics": "fast"}, r"^Unknown metrics config 'fast'"),
        ({"metrics": {"name": "x", "compute": ["silhouete"]}}, r"Unknown metric 'silhouete'"),
        ({"augment": 3, "epochs": 2}, r"^augment must be a callable"),
    ],
)
def test_bad_options_are_one_line(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelFreeMonitor(digits[0], k=10, **kwargs)


def test_open_ended_every_schedule(digits):
    monitor = LabelFreeMonitor(digits[0], schedule="every:3", k=10)
    assert [e for e in range(10) if monitor.is_scheduled(e)] == [0, 3, 6, 9]
    listed = LabelFreeMonitor(digits[0], schedule=[2, 5], k=10)
    assert [e for e in range(10) if listed.is_scheduled(e)] == [0, 2, 5]


def test_lidar_from_the_augmentation_is_reproducible(digits):
    x = digits[0]
    model = Net()
    cfg = {"name": "t", "compute": ["lidar"], "lidar": {"n_images": 20, "n_views": 3}}
    augment = ViewAugmentation(input_size=16, min_scale=0.5, hf_prob=0.0)
    monitor = LabelFreeMonitor(x, epochs=1, metrics=cfg, augment=augment, seed=3)
    first = monitor.evaluate(model, epoch=0)["lf/lidar"]
    assert monitor.evaluate(model, epoch=1)["lf/lidar"] == first  # same images, same views
    # the views: 3 draws of augment over the 20 fixed images, from one generator seeded 3
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[:20].sort().values
    g = torch.Generator().manual_seed(3)
    model.eval()
    with torch.no_grad():
        views = torch.stack([model(augment(x[idx], generator=g)) for _ in range(3)], dim=1)
    model.train()
    assert first == lidar(views)
    as_options = LabelFreeMonitor(
        x,
        epochs=1,
        metrics=cfg,
        augment={"input_size": 16, "min_scale": 0.5, "hf_prob": 0.0},
        seed=3,
    )
    assert as_options.evaluate(model, epoch=0)["lf/lidar"] == first
    no_views = LabelFreeMonitor(x, epochs=1, metrics=cfg).evaluate(model, epoch=0)
    assert "lf/lidar" not in no_views  # skipped: no augmentation


def test_a_plain_augmentation_is_seeded_and_leaves_the_callers_rng_alone(digits):
    x = digits[0]
    cfg = {"name": "t", "compute": ["lidar"], "lidar": {"n_images": 10, "n_views": 2}}
    model = Net()

    def jitter(batch):  # draws from torch's global RNG, no generator= argument
        return batch + 0.1 * torch.randn_like(batch)

    values = [
        LabelFreeMonitor(x, epochs=1, metrics=cfg, augment=jitter).evaluate(model, epoch=0)
        for _ in range(2)
    ]
    assert values[0]["lf/lidar"] == values[1]["lf/lidar"]
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    LabelFreeMonitor(x, epochs=1, metrics=cfg, augment=jitter).evaluate(model, epoch=0)
    assert torch.equal(torch.rand(3), expected)


def test_resumed_run_dir_keeps_its_records(digits, tmp_path):
    x = digits[0]
    run = tmp_path / "run"
    first = LabelFreeMonitor(x, epochs=2, schedule="every:1", k=10, run_dir=run)
    first.maybe_evaluate(Net(), epoch=0)
    first.maybe_evaluate(Net(), epoch=1)
    again = LabelFreeMonitor(x, epochs=2, schedule="every:1", k=10, run_dir=run)
    assert not again.is_scheduled(1)
    assert again.maybe_evaluate(Net(), epoch=1) is None
    again.maybe_evaluate(Net(), epoch=2)
    assert [r["epoch"] for r in _records(run)] == [0, 1, 2]


def test_csv_logger_and_statuses(digits, tmp_path):
    x = digits[0]
    run = tmp_path / "run"
    logger = CSVLogger(run_dir=run, config={}, status={})
    monitor = LabelFreeMonitor(
        x, epochs=3, k=10, run_dir=run, logger=logger, method="simclr", config={"lr": 0.1}
    )

    def train_and_fail():
        with monitor:
            monitor.maybe_evaluate(Net(), epoch=0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train_and_fail()
    status = RunDir(run).read_status()
    assert status["status"] == "failed"
    assert status["error"] == "RuntimeError: boom"
    assert status["method"] == "simclr"
    assert status["config"]["lr"] == 0.1
    assert status["config"]["labelfree_monitor"]["metrics"]["name"] == "paper"
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,step,wall_s,eval_s,train/loss,lf/silhouette")
    with pytest.raises(ValueError, match="status='done' is not one of: running"):
        monitor.close("done")


def _doc_example() -> str:
    text = DOC.read_text()
    marker = text.index("<!-- tests/test_monitor.py runs the next code block as it stands. -->")
    (block,) = re.findall(r"```python\n(.*?)```", text[marker:], flags=re.S)[:1]
    return block


def test_doc_example_adds_few_lines():
    lines = [line for line in _doc_example().splitlines() if line.endswith("# labelfree")]
    assert len(lines) == 5  # the import, the run's names, the monitor, epoch 0, each epoch


@pytest.mark.slow
def test_doc_example_runs_and_labelfree_analyze_reads_it(tmp_path, monkeypatch, compose_analyze):
    from labelfree.analyze import analyze

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_doc_example(), str(DOC), "exec"), namespace)  # noqa: S102 - our own doc
    run = tmp_path / "runs" / "simclr"
    records = _records(run)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert all(math.isfinite(r["lf/silhouette"]) for r in records)
    assert records[0]["train/loss"] is None
    assert records[-1]["train/loss"] > 0
    assert RunDir(run).read_status()["status"] == "completed"
    assert all(0 < r["eval_s"] < 60 for r in records)
    # no labels: correlate the label-free metrics with S1
    targets = ("correlation.targets=[lf/silhouette]", "correlation.extra_metrics=[]")
    fast = ("bootstrap.n_resamples=50", "figures.enabled=false")
    result = analyze(
        compose_analyze(f"runs={run.parent}", f"output={tmp_path / 'a'}", *targets, *fast)
    )
    runs = result.collection.runs
    assert list(runs["method"].unique()) == ["simclr"]
    assert len(runs) == 6
    assert set(result.correlations["metric"]) >= {"lf/kmeans_agreement", "lf/entropy"}


def test_numpy_images_and_datasets_are_stacked(digits):
    x = digits[0][:50]
    model = Net()
    cfg = {"name": "t", "compute": ["rankme"]}
    reference = LabelFreeMonitor(x, epochs=1, metrics=cfg).evaluate(model, epoch=0)
    from_numpy = LabelFreeMonitor(x.numpy(), epochs=1, metrics=cfg).evaluate(model, epoch=0)
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(50))
    from_dataset = LabelFreeMonitor(dataset, epochs=1, metrics=cfg).evaluate(model, epoch=0)
    assert reference["lf/rankme"] == from_numpy["lf/rankme"] == from_dataset["lf/rankme"]
    with pytest.raises(ValueError, match="images must be a tensor"):
        LabelFreeMonitor([1, 2, 3], epochs=1, metrics=cfg)
    with pytest.raises(ValueError, match=r"images of dtype uint8 must be images \(N, C, H, W\)"):
        LabelFreeMonitor(np.zeros((5, 3), dtype=np.uint8), epochs=1, metrics=cfg)


def test_uint8_images_are_scaled_and_normalised_like_training(digits):
    x = (digits[0][:40] * 255).round().to(torch.uint8)
    model = Net()
    cfg = {"name": "t", "compute": ["rankme"]}
    normalize = {"mean": [0.3], "std": [0.2]}
    got = LabelFreeMonitor(x, epochs=1, metrics=cfg, normalize=normalize).evaluate(model, epoch=0)
    floats = (x.float() / 255 - 0.3) / 0.2
    want = LabelFreeMonitor(floats, epochs=1, metrics=cfg).evaluate(model, epoch=0)
    assert got["lf/rankme"] == pytest.approx(want["lf/rankme"], rel=1e-6)
