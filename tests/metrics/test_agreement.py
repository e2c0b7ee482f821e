import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score
from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information

from labelfree.metrics import (
    adjusted_mutual_info,
    adjusted_rand_index,
    kmeans,
    kmeans_agreement,
    kmeans_gt_ami,
)
from labelfree.metrics.agreement import _expected_mutual_info


def _random_pair(rng, n, ka, kb, noise):
    a = rng.integers(0, ka, n)
    b = np.where(rng.random(n) < noise, rng.integers(0, kb, n), a % kb)
    return a, b


@pytest.mark.parametrize(
    ("n", "ka", "kb", "noise"),
    [
        (20, 2, 3, 0.5),
        (300, 5, 5, 0.3),
        (1000, 10, 10, 0.8),
        (5000, 100, 100, 0.5),
        (2000, 3, 200, 0.9),
        (50, 50, 2, 1.0),
        (10000, 10, 12, 0.1),
    ],
)
def test_ami_matches_sklearn(n, ka, kb, noise):
    a, b = _random_pair(np.random.default_rng(n + ka), n, ka, kb, noise)
    assert adjusted_mutual_info(a, b) == pytest.approx(adjusted_mutual_info_score(a, b), abs=1e-6)
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


@pytest.mark.parametrize(("n", "ka", "kb"), [(40, 3, 4), (3000, 30, 7), (20000, 10, 100)])
def test_expected_mutual_info_matches_sklearn_cython(n, ka, kb):
    rng = np.random.default_rng(n)
    a, b = _random_pair(rng, n, ka, kb, 0.5)
    cont = np.zeros((ka, kb), dtype=np.int64)
    np.add.at(cont, (a, b), 1)
    cont = cont[cont.sum(1) > 0][:, cont.sum(0) > 0]
    ours = _expected_mutual_info(torch.from_numpy(cont.sum(1)), torch.from_numpy(cont.sum(0)), n)
    assert ours.item() == pytest.approx(expected_mutual_information(cont, n), rel=1e-9, abs=1e-12)


def test_ami_identical_partitions_is_one():
    a = np.random.default_rng(0).integers(0, 7, 500)
    assert adjusted_mutual_info(a, a) == pytest.approx(1.0, abs=1e-12)
    assert adjusted_mutual_info(a, (a + 3) % 7) == pytest.approx(1.0, abs=1e-12)


def test_ami_conventions_match_sklearn():
    one = np.zeros(10, dtype=int)
    many = np.arange(10) % 3
    assert adjusted_mutual_info(one, one) == adjusted_mutual_info_score(one, one) == 1.0
    assert adjusted_mutual_info(one, many) == adjusted_mutual_info_score(one, many) == 0.0
    assert adjusted_rand_index(one, one) == adjusted_rand_score(one, one) == 1.0


def test_ami_rejects_different_lengths():
    with pytest.raises(ValueError, match="labels_b has 3 entries"):
        adjusted_mutual_info(np.zeros(4, dtype=int), np.zeros(3, dtype=int))


def test_kmeans_agreement_is_mean_pairwise_ami(overlapping_blobs):
    parts = kmeans(overlapping_blobs.x, k=10, n_runs=4, seed=0).labels.numpy()
    expected = np.mean(
        [adjusted_mutual_info_score(parts[i], parts[j]) for i in range(4) for j in range(i + 1, 4)]
    )
    assert kmeans_agreement(parts) == pytest.approx(expected, abs=1e-6)
    expected_ari = np.mean(
        [adjusted_rand_score(parts[i], parts[j]) for i in range(4) for j in range(i + 1, 4)]
    )
    assert kmeans_agreement(parts, method="ari") == pytest.approx(expected_ari, abs=1e-12)
    assert kmeans_agreement(parts) < 1.0  # overlapping clusters: initialisations disagree


def test_kmeans_agreement_needs_two_partitions():
    with pytest.raises(ValueError, match="needs at least 2 partitions"):
        kmeans_agreement(np.zeros((1, 10), dtype=int))
    with pytest.raises(ValueError, match="Unknown method='nmi'"):
        kmeans_agreement(np.zeros((2, 10), dtype=int), method="nmi")


def test_kmeans_gt_ami_matches_sklearn(overlapping_blobs):
    part = kmeans(overlapping_blobs.x, k=10, n_runs=1, seed=0).labels[0]
    expected = adjusted_mutual_info_score(overlapping_blobs.y, part.numpy())
    assert kmeans_gt_ami(part, overlapping_blobs.y) == pytest.approx(expected, abs=1e-6)
