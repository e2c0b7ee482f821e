import math

import numpy as np
import pytest
from sklearn.metrics import silhouette_samples as sk_silhouette_samples
from sklearn.metrics import silhouette_score

from labelfree.metrics import silhouette, silhouette_samples


def test_silhouette_matches_sklearn_exact(overlapping_blobs):
    b = overlapping_blobs
    x64 = b.x.astype(np.float64)
    assert silhouette(x64, b.y) == pytest.approx(silhouette_score(x64, b.y), abs=1e-10)
    assert silhouette(b.x, b.y) == pytest.approx(silhouette_score(x64, b.y), abs=1e-5)
    ours = silhouette_samples(x64, b.y).numpy()
    np.testing.assert_allclose(ours, sk_silhouette_samples(x64, b.y), atol=1e-10)


def test_silhouette_with_singletons_matches_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    y = np.r_[np.zeros(10), np.ones(18), 2, 3].astype(int)  # two singleton clusters
    ours = silhouette_samples(x, y).numpy()
    np.testing.assert_allclose(ours, sk_silhouette_samples(x, y), atol=1e-10)
    assert ours[-1] == 0.0
    assert ours[-2] == 0.0


def test_silhouette_hand_computed():
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    # point 0: a = 1, b = (10 + 11) / 2 = 10.5, s = 9.5 / 10.5
    # point 1: a = 1, b = (9 + 10) / 2 = 9.5, s = 8.5 / 9.5
    expected = np.array([9.5 / 10.5, 8.5 / 9.5, 8.5 / 9.5, 9.5 / 10.5])
    np.testing.assert_allclose(silhouette_samples(x, np.array([0, 0, 1, 1])), expected)


def test_silhouette_invariant_to_label_permutation_and_values(overlapping_blobs):
    b = overlapping_blobs
    perm = np.random.default_rng(0).permutation(b.k)
    relabelled = perm[b.y] * 7 + 100  # permuted and non-contiguous ids
    # equal up to float32 rounding: relabelling reorders the one-hot columns of the block sums
    assert silhouette(b.x, relabelled) == pytest.approx(silhouette(b.x, b.y), abs=1e-7)


def test_sampled_silhouette_is_close_to_exact(overlapping_blobs):
    b = overlapping_blobs
    exact = silhouette(b.x, b.y)
    samples = silhouette_samples(b.x, b.y).numpy()
    m, n = 500, len(b.x)
    se = samples.std() / math.sqrt(m) * math.sqrt(1 - m / n)
    errors = [silhouette(b.x, b.y, sample_size=m, seed=s) - exact for s in range(20)]
    assert max(abs(e) for e in errors) < 4 * se  # 4 standard errors
    assert abs(np.mean(errors)) < 2 * se / math.sqrt(20) * 2  # unbiased
    assert silhouette(b.x, b.y, sample_size=n) == exact  # sample_size >= N: exact


def test_silhouette_single_cluster_is_nan_with_warning():
    x = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.warns(RuntimeWarning, match=r"undefined for 1 cluster"):
        assert math.isnan(silhouette(x, np.zeros(20, dtype=int)))


def test_silhouette_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels has 3 entries but the embeddings have 4 rows"):
        silhouette(np.zeros((4, 2)), np.array([0, 1, 0]))


def test_silhouette_identical_points_in_two_clusters_is_zero():
    x = np.zeros((6, 3))
    assert silhouette(x, np.array([0, 0, 0, 1, 1, 1])) == 0.0


# ---------------------------------------------------------------- AMI / ARI
