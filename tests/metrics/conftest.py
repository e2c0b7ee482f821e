"""Shared fixtures for the metric tests: seeded embeddings with known structure."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch


@dataclass(frozen=True)
class Blobs:
    """Seeded Gaussian blobs: ``x`` (N, D) float32, ``y`` (N,) int64 true cluster ids, ``k``."""

    x: np.ndarray
    y: np.ndarray
    k: int


def make_blobs(n=600, d=16, k=4, *, spread=8.0, noise=1.0, seed=0) -> Blobs:
    """``k`` well separated isotropic Gaussian blobs (balanced), shuffled."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, d))
    y = np.arange(n) % k
    rng.shuffle(y)
    x = centers[y] + rng.normal(scale=noise, size=(n, d))
    return Blobs(x.astype(np.float32), y.astype(np.int64), k)


@pytest.fixture
def blobs() -> Blobs:
    """600 points, 16 dims, 4 well separated clusters (k-means recovers them exactly)."""
    return make_blobs()


@pytest.fixture
def overlapping_blobs() -> Blobs:
    """2000 points, 32 dims, 10 overlapping clusters: k-means has several local optima."""
    return make_blobs(n=2000, d=32, k=10, spread=1.5, noise=1.0, seed=1)


@pytest.fixture
def labelled_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train / test splits (1500 / 1000 points, 32 dims, 5 classes) of moderately hard data."""
    rng = np.random.default_rng(2)
    k, d = 5, 32
    means = rng.normal(scale=0.5, size=(k, d))
    y = rng.integers(0, k, 2500)
    x = (means[y] + rng.normal(size=(2500, d))).astype(np.float32)
    return x[:1500], y[:1500], x[1500:], y[1500:]


@pytest.fixture
def blob_factory():
    """``make_blobs`` itself, for tests that need other sizes."""
    return make_blobs


@pytest.fixture
def cuda():
    """The CUDA device; skips the test cleanly when torch sees no GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (no GPU visible to torch)")
    return torch.device("cuda")
