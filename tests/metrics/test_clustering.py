import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, silhouette_score
from sklearn.metrics import silhouette_samples as sk_silhouette_samples
from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information

from labelfree.metrics import (
    adjusted_mutual_info,
    adjusted_rand_index,
    kmeans,
    kmeans_agreement,
    kmeans_gt_ami,
    silhouette,
    silhouette_samples,
)
from labelfree.metrics.clustering import _expected_mutual_info

# ---------------------------------------------------------------- k-means


def test_kmeans_recovers_separated_blobs(blobs):
    res = kmeans(blobs.x, k=blobs.k, n_runs=3, seed=0)
    assert res.labels.shape == (3, len(blobs.x))
    assert res.centers.shape == (3, blobs.k, blobs.x.shape[1])
    for run in res.labels:
        assert adjusted_mutual_info_score(blobs.y, run.numpy()) == pytest.approx(1.0)


def test_kmeans_inertia_matches_sklearn_on_blobs(blobs):
    ours = kmeans(blobs.x, k=blobs.k, n_runs=5, seed=0)
    ref = [KMeans(blobs.k, n_init=1, random_state=s).fit(blobs.x).inertia_ for s in range(5)]
    # inertia recomputed independently from our labels and centres
    for r in range(5):
        c = ours.centers[r].numpy().astype(np.float64)
        d2 = ((blobs.x[:, None, :] - c[None]) ** 2).sum(-1)
        assert ours.inertia[r].item() == pytest.approx(d2.min(1).sum(), rel=1e-4)
    assert np.mean(ours.inertia.numpy()) == pytest.approx(np.mean(ref), rel=0.01)


def test_kmeans_quality_matches_sklearn_on_overlapping_blobs(overlapping_blobs):
    b = overlapping_blobs
    ours = kmeans(b.x, k=b.k, n_runs=20, seed=0).inertia.numpy()
    ref = [KMeans(b.k, n_init=1, random_state=s).fit(b.x).inertia_ for s in range(20)]
    # Several local optima (the mean over 10 runs varies by ~2% from seed to seed): the best
    # and the median run of 20 seeded initialisations must match scikit-learn's.
    assert np.min(ours) == pytest.approx(np.min(ref), rel=1e-3)
    assert np.median(ours) == pytest.approx(np.median(ref), rel=0.01)


def test_kmeans_is_deterministic_given_seed(overlapping_blobs):
    a = kmeans(overlapping_blobs.x, k=10, n_runs=3, seed=7)
    b = kmeans(overlapping_blobs.x, k=10, n_runs=3, seed=7)
    c = kmeans(overlapping_blobs.x, k=10, n_runs=3, seed=8)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)
    # The runs are different initialisations, not copies of one.
    assert not torch.equal(a.centers[0], a.centers[1])


def test_kmeans_accepts_torch_and_numpy_alike(blobs):
    a = kmeans(blobs.x, k=4, n_runs=2, seed=3)
    b = kmeans(torch.from_numpy(blobs.x), k=4, n_runs=2, seed=3)
    assert torch.equal(a.labels, b.labels)


def test_kmeans_rejects_more_clusters_than_samples():
    with pytest.raises(ValueError, match=r"k=11 is larger than the number of samples \(10\)"):
        kmeans(np.random.default_rng(0).normal(size=(10, 3)), k=11)


def test_kmeans_identical_embeddings_collapse_to_one_cluster():
    x = np.ones((50, 4), dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="identical embeddings"):
        res = kmeans(x, k=5, n_runs=2)
    assert res.labels.unique().tolist() == [0]
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert math.isnan(silhouette(x, res.labels[0]))


def test_kmeans_fewer_distinct_points_than_k_warns():
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    with pytest.warns(RuntimeWarning, match="non-empty clusters"):
        res = kmeans(x, k=5, n_runs=2, seed=0)
    for run in res.labels:
        assert adjusted_mutual_info_score(np.repeat(np.arange(3), 10), run.numpy()) == 1.0


def test_kmeans_rejects_non_finite():
    x = np.zeros((10, 2))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite values"):
        kmeans(x, k=2)


# ---------------------------------------------------------------- silhouette


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


def test_kmeans_identical_rows_with_inexact_mean_warn():
    """0.1 has no exact float sum: the centred data is ~1e-8, not 0, yet the rows are identical."""
    x = np.full((1000, 7), 0.1, dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="identical embeddings"):
        res = kmeans(x, k=3, n_runs=2)
    assert int(res.labels.max()) == 0


def test_cluster_sums_one_hot_branch_matches_index_add():
    """The CUDA branch (one-hot product) gives the CPU branch's sums; checked here on the CPU."""
    from labelfree.metrics.clustering import _cluster_sums

    x = torch.randn(500, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 6, (500,), generator=torch.Generator().manual_seed(1))
    labels[labels == 4] = 5  # an empty cluster
    a = _cluster_sums(x, labels, 6, one_hot=True)
    b = _cluster_sums(x, labels, 6, one_hot=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    ref = np.stack(
        [x[labels == c].sum(0).numpy() if (labels == c).any() else np.zeros(7) for c in range(6)]
    )
    np.testing.assert_allclose(b.numpy(), ref, atol=1e-5)
