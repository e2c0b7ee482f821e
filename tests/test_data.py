"""Datasets: shapes, splits, subsets, errors that name the fix, and both view backends."""

import numpy as np
import pytest
import torch

from labelfree.data import ViewLoader, balanced_subset, build_dataset
from labelfree.config import as_container


def test_digits_default(compose_train):
    cfg = compose_train()
    ds = build_dataset(cfg.data)
    assert (len(ds.train), len(ds.test)) == (1347, 450)
    assert ds.train.images.dtype == torch.uint8
    assert ds.train.images.shape[1:] == (1, 16, 16)
    assert ds.num_classes == 10
    assert sorted(ds.test.labels.unique().tolist()) == list(range(10))


def test_balanced_subset_is_balanced_and_seeded():
    labels = np.repeat(np.arange(5), 20)
    idx = balanced_subset(labels, 7, seed=3)
    assert np.bincount(labels[idx]).tolist() == [7] * 5
    assert np.array_equal(idx, balanced_subset(labels, 7, seed=3))
    with pytest.raises(ValueError, match="only 20 samples but 21 per class"):
        balanced_subset(labels, 21, seed=0)


def test_cifar10_missing_files_say_how_to_fix(compose_train, tmp_path):
    cfg = compose_train("data=cifar10", f"data.root={tmp_path}")
    with pytest.raises(FileNotFoundError, match="data.download=true.*data.root="):
        build_dataset(cfg.data)


def test_imagefolder_missing_root(compose_train, tmp_path):
    cfg = compose_train("data=imagefolder", f"data.root={tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="data.root=.*nope.*train/"):
        build_dataset(cfg.data)


def test_imagefolder_on_real_cifar10(compose_train, cifar10_root):
    cfg = compose_train(
        "data=imagefolder",
        f"data.root={cifar10_root}",
        "data.train_per_class=20",
        "data.test_per_class=10",
    )
    ds = build_dataset(cfg.data)
    assert ds.classes[:3] == ["airplane", "automobile", "bird"]
    assert ds.train.images.shape == (200, 3, 32, 32)
    assert np.bincount(ds.test.labels.numpy()).tolist() == [10] * 10
    # real photographs: per-channel means near the archive's documented 0.485/0.477/0.439
    means = ds.train.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.485, 0.477, 0.439]), atol=0.06)


@pytest.mark.parametrize("backend", ["batched", "lightly"])
def test_view_loader_replays_from_seed(compose_train, backend):
    cfg = compose_train()
    ds = build_dataset(cfg.data)
    loader = ViewLoader(
        ds.train.images,
        as_container(cfg.data.augment),
        as_container(cfg.method.views),
        batch_size=128,
        backend=backend,
        num_workers=0,
    )
    first = [v for views in loader.epoch(torch.Generator().manual_seed(5)) for v in views]
    again = [v for views in loader.epoch(torch.Generator().manual_seed(5)) for v in views]
    other = next(loader.epoch(torch.Generator().manual_seed(6)))
    assert len(loader) == 1347 // 128
    assert len(first) == 2 * len(loader)
    assert first[0].shape == (128, 1, 16, 16)
    assert first[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1]), "the two views of a batch must differ"
