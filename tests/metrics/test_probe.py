import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from labelfree.metrics import fewshot_probe_acc, knn_acc, linear_probe_acc
from labelfree.metrics.probe import _fewshot_draw


def test_linear_probe_matches_sklearn_on_the_same_objective(labelled_splits):
    tx, ty, ex, ey = labelled_splits
    l2 = 1e-3
    scaler = StandardScaler().fit(tx)
    ref = LogisticRegression(C=1 / (l2 * len(tx)), max_iter=5000, tol=1e-8)
    ref.fit(scaler.transform(tx), ty)
    ref_acc = ref.score(scaler.transform(ex), ey)
    ours = linear_probe_acc(tx, ty, ex, ey, l2=l2, max_iter=200)
    assert 0.5 < ref_acc < 0.99  # a task where the probe matters
    assert ours == pytest.approx(ref_acc, abs=0.01)


def test_linear_probe_default_within_one_point_of_sklearn_default(labelled_splits):
    tx, ty, ex, ey = labelled_splits
    ref = LogisticRegression(max_iter=1000).fit(tx, ty).score(ex, ey)  # raw features, C=1
    assert linear_probe_acc(tx, ty, ex, ey) == pytest.approx(ref, abs=0.01)


def test_linear_probe_accuracy_hand_checked():
    # 1-D, two classes split at 0: any converged probe separates them.
    tx = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    ex = np.array([[-3.0], [-0.5], [0.5], [3.0]])
    y = np.array([0, 0, 1, 1])
    assert linear_probe_acc(tx, y, ex, y) == 1.0
    assert linear_probe_acc(tx, y, ex, 1 - y) == 0.0


def test_linear_probe_label_values_and_unseen_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = (rng.normal(size=(600, 4)) + 5 * np.eye(3, 4)[y]).astype(np.float32)
    base = linear_probe_acc(x[:300], y[:300], x[300:], y[300:])
    shifted = linear_probe_acc(x[:300], y[:300] * 10 + 7, x[300:], y[300:] * 10 + 7)
    assert shifted == base > 0.95
    # a test class absent from training can never be predicted
    ey = y[300:].copy()
    ey[:30] = 99
    assert linear_probe_acc(x[:300], y[:300], x[300:], ey) <= base - 0.1 + 1e-9


def test_linear_probe_works_under_inference_mode(labelled_splits):
    tx, ty, ex, ey = (torch.as_tensor(a) for a in labelled_splits)
    expected = linear_probe_acc(tx, ty, ex, ey)
    with torch.inference_mode():
        assert linear_probe_acc(tx, ty, ex, ey) == expected


def test_linear_probe_constant_features():
    # identical embeddings: only the bias is learned, so the majority class is predicted
    y = np.array([0, 0, 0, 1])
    assert linear_probe_acc(np.ones((4, 3)), y, np.ones((4, 3)), y) == 0.75


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("standardize", [True, False])
def test_linear_probe_identical_nonzero_embeddings_predict_the_majority_class(dtype, standardize):
    # Every row equal to an arbitrary vector: its float mean is inexact, and the rounding residue
    # after centring used to be scaled up into a signal (class 0 predicted: accuracy 0.25).
    y = np.array([1, 1, 1, 0, 2, 1, 0, 1])  # majority class 1: 5 of 8
    for seed in range(4):
        row = np.random.default_rng(seed).normal(size=5) * (seed + 0.1)
        x = np.tile(row, (8, 1)).astype(dtype)
        assert linear_probe_acc(x, y, x, y, standardize=standardize) == 0.625


def test_fewshot_probe_on_identical_embeddings_predicts_the_majority_class():
    y = np.repeat([0, 1, 1, 1, 2], 20)  # majority class 1: 60 of 100
    x = np.tile(np.random.default_rng(0).normal(size=6), (100, 1)).astype(np.float32)
    assert fewshot_probe_acc(x, y, x, y, fraction=0.5) == pytest.approx(0.6)


def test_linear_probe_ignores_constant_columns(labelled_splits):
    tx, ty, ex, ey = labelled_splits
    row = np.random.default_rng(0).normal(size=4).astype(np.float32)
    pad_t, pad_e = np.tile(row, (len(tx), 1)), np.tile(row, (len(ex), 1))
    padded = linear_probe_acc(np.hstack([tx, pad_t]), ty, np.hstack([ex, pad_e]), ey)
    assert padded == pytest.approx(linear_probe_acc(tx, ty, ex, ey), abs=0.005)


def test_knn_acc_matches_sklearn_weighted_cosine_knn(labelled_splits):
    tx, ty, ex, ey = labelled_splits
    for k, temp in [(20, 0.07), (5, 0.5)]:
        ref = KNeighborsClassifier(
            n_neighbors=k, metric="cosine", weights=lambda d, t=temp: np.exp((1 - d) / t)
        ).fit(tx, ty)
        assert knn_acc(tx, ty, ex, ey, k=k, temperature=temp) == pytest.approx(
            ref.score(ex, ey),
            abs=2e-3,  # ties between near-equal similarities may differ
        )


def test_knn_acc_rejects_too_large_k():
    with pytest.raises(ValueError, match=r"knn k=5 is larger than .* \(4\)"):
        knn_acc(np.eye(4), np.arange(4), np.eye(4), np.arange(4), k=5)


def test_fewshot_draw_takes_a_per_class_fraction():
    y = torch.from_numpy(np.repeat(np.arange(4), [100, 250, 40, 1]))
    gen = torch.Generator().manual_seed(0)
    first = _fewshot_draw(y, 4, 0.02, gen)
    np.testing.assert_array_equal(torch.bincount(y[first], minlength=4).numpy(), [2, 5, 1, 1])
    assert first.unique().numel() == first.numel()  # no repeats
    second = _fewshot_draw(y, 4, 0.02, gen)
    assert not torch.equal(first.sort().values, second.sort().values)  # a new draw


def test_fewshot_at_least_one_per_class_and_seeded(labelled_splits):
    tx, ty, ex, ey = labelled_splits
    a = fewshot_probe_acc(tx, ty, ex, ey, fraction=1e-4, seed=1)  # 1 sample per class
    assert a == fewshot_probe_acc(tx, ty, ex, ey, fraction=1e-4, seed=1)
    assert a != fewshot_probe_acc(tx, ty, ex, ey, fraction=1e-4, seed=2)
    full = fewshot_probe_acc(tx, ty, ex, ey, fraction=1.0, n_draws=1, l2=1e-4)
    assert full == linear_probe_acc(tx, ty, ex, ey)  # fraction 1 = the full probe
    with pytest.raises(ValueError, match=r"fraction=1.5 must be in \(0, 1\]"):
        fewshot_probe_acc(tx, ty, ex, ey, fraction=1.5)


def test_probe_inputs_are_checked():
    with pytest.raises(ValueError, match="embeddings have 3 features but train_embeddings 2"):
        linear_probe_acc(np.zeros((4, 2)), np.arange(4), np.zeros((4, 3)), np.arange(4))
    with pytest.raises(ValueError, match="must hold integer class ids"):
        knn_acc(np.eye(3), np.array([0.5, 1, 2]), np.eye(3), np.arange(3), k=1)
