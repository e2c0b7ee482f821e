"""Datasets: shapes, splits, subsets, errors that name the fix (view backends: tests/views)."""

import numpy as np
import pytest
import torch

from labelfree.data import balanced_subset, build_dataset, extract_archive


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


def test_concurrent_extractions_of_one_archive_extract_it_once(tmp_path, monkeypatch):
    """The jobs of a local sweep start at once: one extracts, the others wait for its marker."""
    import io
    import tarfile
    import threading
    import time

    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            info = tarfile.TarInfo(f"set/{split}/c0/x.jpg")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    calls, real = [], tarfile.TarFile.extractall

    def slow_extractall(self, *args, **kwargs):
        calls.append(1)
        time.sleep(0.3)  # the others arrive while this one extracts
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractall", slow_extractall)
    roots = []
    threads = [
        threading.Thread(target=lambda: roots.append(extract_archive(archive, tmp_path / "d")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert roots == [tmp_path / "d" / "set"] * 3
    assert (tmp_path / "d" / "set" / "test" / "c0" / "x.jpg").read_bytes() == b"abc"
