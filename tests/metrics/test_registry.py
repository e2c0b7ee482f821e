import math

import numpy as np
import pytest

from labelfree.metrics import (
    LABEL_FREE_METRICS,
    LABEL_METRICS,
    compute_metrics,
    metric_key,
    registry,
)
from labelfree.metrics.registry import INPUTS, METRICS, NODES, PROVIDERS, MetricSpec, Provider
from labelfree.metrics.suite import Evaluation


def test_metric_names_and_order_are_the_public_ones():
    assert LABEL_FREE_METRICS == (
        "silhouette",
        "kmeans_agreement",
        "entropy",
        "rankme",
        "alpha_req",
        "nesum",
        "uniformity",
        "l2_std",
        "lidar",
    )
    assert LABEL_METRICS == ("kmeans_gt_ami", "linear_probe_acc", "knn_acc", "fewshot_probe_acc")
    assert list(NODES)[0] == "kmeans"
    assert all(metric_key(m).startswith("sup/") for m in LABEL_METRICS)
    assert all(metric_key(m).startswith("lf/") for m in LABEL_FREE_METRICS)


@pytest.mark.parametrize("spec", [*METRICS, *PROVIDERS.values()], ids=lambda s: s.name)
def test_every_need_is_an_input_or_a_provider(spec):
    for need in spec.needs:
        assert need in INPUTS or need in PROVIDERS, f"{spec.name} needs unknown {need!r}"


@pytest.mark.parametrize("node", list(NODES))
def test_every_rule_checks_a_key_of_its_node(node):
    spec = NODES[node]
    assert set(spec.rules) <= set(registry.node_keys(spec)), node
    assert node == spec.fn.__name__  # the node is named after its function


def test_providers_are_computed_once_and_only_when_needed(monkeypatch, blobs):
    calls = []
    real = registry.kmeans

    def counting_kmeans(*args, **kwargs):
        calls.append(kwargs["k"])
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "kmeans", counting_kmeans)
    cfg = {
        "name": "t",
        "compute": ["silhouette", "kmeans_agreement", "kmeans_gt_ami"],
        "kmeans": {"k": 4, "n_runs": 2},
    }
    timings = {}
    compute_metrics(blobs.x, config=cfg, labels=blobs.y, timings=timings)
    assert calls == [4]  # one k-means for three metrics
    assert list(timings) == ["kmeans", "silhouette", "kmeans_agreement", "kmeans_gt_ami"]
    calls.clear()
    timings.clear()
    compute_metrics(blobs.x, config={"name": "t", "compute": ["rankme"]}, timings=timings)
    assert calls == []
    assert list(timings) == ["spectrum", "rankme"]


def test_a_provider_can_be_passed_by_keyword(monkeypatch):
    """The contract for a new shared intermediate: a provider, and a need of that name."""

    def gram_trace(x, *, gram, scale: float = 1.0) -> float:
        return scale * float(gram.trace())

    computed = []

    def gram(evaluation):
        computed.append(1)
        x = evaluation["embeddings"]
        return x.T @ x

    monkeypatch.setitem(PROVIDERS, "gram", Provider("gram", gram, timing="gram"))
    spec = MetricSpec(gram_trace, needs=("embeddings", "gram"))
    assert registry.node_keys(spec) == ("scale",)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    timings = {}
    evaluation = Evaluation(
        {"embeddings": x},
        config={"gram_trace": {"scale": 2.0}},
        sizes=registry.DataSizes(3, None, None),
        seed=0,
        timings=timings,
    )
    assert evaluation.call(spec) == 2.0 * float((x * x).sum())
    assert evaluation.call(spec) == evaluation.call(spec)
    assert computed == [1]
    assert set(timings) == {"gram", "gram_trace"}


def test_spectrum_is_a_need_never_a_config_key():
    for name in ("rankme", "alpha_req", "nesum"):
        assert "spectrum" in registry.SPECS[name].needs
        assert "spectrum" not in registry.node_keys(registry.SPECS[name])
    assert registry.node_keys(registry.SPECS["rankme"]) == ("eps", "max_samples")
    assert registry.node_keys(registry.SPECS["lidar"]) == ("delta", "eps", "n_images", "n_views")
    assert registry.node_keys(registry.SPECS["l2_std"]) == ()


def _counting_spectrum(monkeypatch):
    calls = []
    real = registry._spectrum

    def counting(x, **kwargs):
        calls.append({"rows": x.shape[0], **kwargs})
        return real(x, **kwargs)

    monkeypatch.setattr(registry, "_spectrum", counting)
    monkeypatch.setattr("labelfree.metrics.spectral._spectrum", counting)
    return calls


def test_one_spectrum_serves_rankme_alpha_req_and_nesum(monkeypatch, blob_factory):
    x = blob_factory(n=500, d=24, k=4, seed=5).x
    names = ["rankme", "alpha_req", "nesum"]
    alone = {n: compute_metrics(x, config={"name": "t", "compute": [n]})[f"lf/{n}"] for n in names}
    calls = _counting_spectrum(monkeypatch)
    timings = {}
    shared = compute_metrics(x, config={"name": "t", "compute": names}, timings=timings)
    assert len(calls) == 1  # one pass for three metrics
    assert calls[0] | {"rows": 500} == {
        "rows": 500,
        "max_samples": None,
        "seed": 0,
        "covariance": True,
        "singular": True,
    }
    assert list(timings) == ["spectrum", "rankme", "alpha_req", "nesum"]
    assert shared["lf/alpha_req"] == alone["alpha_req"]
    assert shared["lf/nesum"] == alone["nesum"]
    assert shared["lf/rankme"] == pytest.approx(alone["rankme"], rel=1e-10)


def test_rankme_above_max_samples_computes_its_own_subsample(monkeypatch, blob_factory):
    """The shared spectrum covers all rows; RankMe with max_samples < N uses other rows."""
    x = blob_factory(n=400, d=16, k=4, seed=6).x
    cfg = {"name": "t", "compute": ["rankme", "nesum"], "rankme": {"max_samples": 300}}
    alone = compute_metrics(x, config={**cfg, "compute": ["rankme"]}, seed=2)["lf/rankme"]
    calls = _counting_spectrum(monkeypatch)
    out = compute_metrics(x, config=cfg, seed=2)
    # the shared one: covariance only, all rows; then RankMe's own 300 seeded rows
    assert [(c["max_samples"], c["covariance"], c["singular"]) for c in calls] == [
        (None, True, False),
        (300, False, True),
    ]
    assert out["lf/rankme"] == alone
    assert out["lf/rankme"] != compute_metrics(x, config={**cfg, "rankme": {}}, seed=2)["lf/rankme"]
    calls.clear()
    compute_metrics(x, config={**cfg, "compute": ["rankme"]}, seed=2)
    assert [(c["max_samples"], c["seed"]) for c in calls] == [(300, 2)]  # RankMe's rows, once


def test_lidar_and_l2_std_through_the_suite(blob_factory):
    from labelfree.metrics import l2_std, lidar

    x = blob_factory(n=200, d=8, k=4, seed=7).x
    rng = np.random.default_rng(0)
    views = x[:20, None, :] + 0.3 * rng.normal(size=(20, 4, 8)).astype(np.float32)
    cfg = {"name": "t", "compute": ["l2_std", "lidar"], "lidar": {"delta": 1e-3, "n_images": 7}}
    out = compute_metrics(x, config=cfg, views=views)
    assert out == {"lf/l2_std": l2_std(x), "lf/lidar": lidar(views, delta=1e-3)}
    assert list(compute_metrics(x, config=cfg)) == ["lf/l2_std"]  # no views: LiDAR skipped
    bad = views.copy()
    bad[0, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="views contain 1 non-finite .* NaN: lidar"):
        out = compute_metrics(x, config=cfg, views=bad)
    assert math.isnan(out["lf/lidar"])
    assert out["lf/l2_std"] == l2_std(x)
    with pytest.raises(ValueError, match=r"views must be a 3-D array .* got shape \(20, 8\)"):
        compute_metrics(x, config=cfg, views=views[:, 0])
    with pytest.raises(ValueError, match=r"metrics.lidar.n_views=1 must be an integer >= 2"):
        compute_metrics(x, config={**cfg, "lidar": {"n_views": 1}}, views=views)


def test_lidar_is_skipped_without_views_and_says_why(caplog, blob_factory):
    x = blob_factory(n=100, d=8, k=4, seed=8).x
    with caplog.at_level("INFO", logger="labelfree.metrics.suite"):
        assert compute_metrics(x, config={"name": "t", "compute": ["lidar"]}) == {}
    assert "metrics skipped: lidar (no augmented views)" in caplog.text
