"""CUDA tests: same values as on the CPU, and the data never leave the GPU. Skip without CUDA."""

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from labelfree.metrics import (
    ALL_METRICS,
    adjusted_mutual_info,
    adjusted_rand_index,
    alpha_req,
    compute_metrics,
    entropy,
    kmeans,
    kmeans_agreement,
    knn_acc,
    linear_probe_acc,
    metric_key,
    nesum,
    rankme,
    silhouette,
    uniformity,
)

pytestmark = pytest.mark.gpu

FULL = {
    "name": "full",
    "compute": list(ALL_METRICS),
    "kmeans": {"k": None, "n_runs": 5},
    "silhouette": {"sample_size": 500},
    "entropy": {"estimator": "histogram"},
}


class DeviceToHostCopies(TorchDispatchMode):
    """Records every copy of a CUDA tensor with more than ``limit`` elements to the CPU."""

    _COPIES = (
        torch.ops.aten._to_copy.default,
        torch.ops.aten.copy_.default,
        torch.ops.aten._copy_from.default,
        torch.ops.aten._copy_from_and_resize.default,
    )

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self._COPIES:
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst = args[0] if func is torch.ops.aten.copy_.default else out
            if (
                isinstance(src, torch.Tensor)
                and src.is_cuda
                and isinstance(dst, torch.Tensor)
                and not dst.is_cuda
                and src.numel() > self.limit
            ):
                self.seen.append((str(func), tuple(src.shape)))
        return out


@pytest.fixture
def data(blob_factory):
    b = blob_factory(n=3000, d=64, k=10, spread=1.5, noise=1.0, seed=4)
    return b.x[:1000], b.y[:1000], b.x[1000:], b.y[1000:]


def test_metrics_on_cuda_match_cpu(cuda, data):
    tx, ty, ex, ey = data
    cx, cy, gx, gy = (torch.from_numpy(a).to(cuda) for a in (tx, ty, ex, ey))
    cpu_ex = torch.from_numpy(ex)
    assert silhouette(gx, gy) == pytest.approx(silhouette(cpu_ex, ey), abs=1e-5)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10, 2000), rng.integers(0, 12, 2000)
    ga, gb = torch.from_numpy(a).to(cuda), torch.from_numpy(b).to(cuda)
    assert adjusted_mutual_info(ga, gb) == pytest.approx(adjusted_mutual_info(a, b), abs=1e-9)
    assert adjusted_rand_index(ga, gb) == pytest.approx(adjusted_rand_index(a, b), abs=1e-12)
    for est, tol in (("histogram", 1e-6), ("knn", 1e-3), ("gaussian", 1e-6)):
        assert entropy(gx, estimator=est, space="pca", pca_dim=8) == pytest.approx(
            entropy(cpu_ex, estimator=est, space="pca", pca_dim=8), abs=tol
        )
    assert rankme(gx) == pytest.approx(rankme(cpu_ex), rel=1e-6)
    assert alpha_req(gx) == pytest.approx(alpha_req(cpu_ex), rel=1e-6)
    assert nesum(gx) == pytest.approx(nesum(cpu_ex), rel=1e-6)
    assert uniformity(gx, max_samples=None) == pytest.approx(
        uniformity(cpu_ex, max_samples=None), abs=1e-4
    )
    assert linear_probe_acc(cx, cy, gx, gy) == pytest.approx(
        linear_probe_acc(tx, ty, ex, ey), abs=0.01
    )
    assert knn_acc(cx, cy, gx, gy) == pytest.approx(knn_acc(tx, ty, ex, ey), abs=2e-3)


def test_kmeans_on_cuda(cuda, blob_factory):
    b = blob_factory(n=2000, d=32, k=8, spread=8.0, seed=5)
    res = kmeans(torch.from_numpy(b.x).to(cuda), k=8, n_runs=4, seed=0)
    assert res.labels.is_cuda
    assert res.centers.is_cuda
    best = kmeans(b.x, k=8, n_runs=4, seed=0).inertia.min().item()
    # separated blobs: every run, on either device, reaches the same (global) optimum
    assert res.inertia.cpu().numpy() == pytest.approx([best] * 4, rel=1e-4)
    assert kmeans_agreement(res.labels) == pytest.approx(1.0)
    again = kmeans(torch.from_numpy(b.x).to(cuda), k=8, n_runs=4, seed=0)
    assert torch.equal(res.labels, again.labels)  # deterministic on the device too


def test_suite_stays_on_the_gpu(cuda, data):
    tx, ty, ex, ey = (torch.from_numpy(a).to(cuda) for a in data)
    with DeviceToHostCopies(limit=1000) as guard:
        out = compute_metrics(
            ex, config=FULL, labels=ey, train_embeddings=tx, train_labels=ty, seed=0
        )
    assert guard.seen == [], f"device-to-host copies of large tensors: {guard.seen}"
    assert list(out) == [metric_key(m) for m in ALL_METRICS]
    assert all(isinstance(v, float) and not math.isnan(v) for v in out.values())
    ref = compute_metrics(
        data[2], config=FULL, labels=data[3], train_embeddings=data[0], train_labels=data[1]
    )
    for key in ("lf/entropy", "lf/rankme", "lf/alpha_req", "lf/nesum"):
        assert out[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-4)
    for key in ("sup/linear_probe_acc", "sup/knn_acc"):
        assert out[key] == pytest.approx(ref[key], abs=0.01)
    assert 0 < out["sup/fewshot_probe_acc"] <= 1  # other random draws on the GPU
