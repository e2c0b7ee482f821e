import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_mutual_info_score, silhouette_score

import labelfree
from labelfree.metrics import (
    ALL_METRICS,
    LABEL_FREE_METRICS,
    check_metrics_config,
    compute_metrics,
    kmeans,
    metric_key,
)
from labelfree.metrics.registry import NODES

CONF = Path(labelfree.__file__).parent / "conf"


@pytest.fixture(scope="module")
def metric_configs():
    """The shipped metrics configs, composed by Hydra as training and labelfree-eval do."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return {
            name: compose("eval", overrides=[f"metrics={name}"]).metrics
            for name in ("paper", "full")
        }


@pytest.fixture
def small_splits(blob_factory):
    b = blob_factory(n=900, d=16, k=5, spread=3.0, noise=1.0, seed=3)
    return b.x[:400], b.y[:400], b.x[400:], b.y[400:]


def _cfg(metric_configs, name, **overrides):
    cfg = OmegaConf.to_container(metric_configs[name])
    for dotted, value in overrides.items():
        node, key = dotted.split("__")
        cfg[node][key] = value
    return cfg


def test_shipped_configs_compose_with_struct_mode(metric_configs):
    paper, full = metric_configs["paper"], metric_configs["full"]
    assert paper.name == "paper"
    assert full.name == "full"
    assert list(paper.compute) == [
        "silhouette",
        "kmeans_agreement",
        "entropy",
        "kmeans_gt_ami",
        "linear_probe_acc",
    ]
    assert sorted(full.compute) == sorted(ALL_METRICS)
    assert paper.kmeans.k is None
    assert paper.kmeans.n_runs == 5
    assert OmegaConf.is_struct(paper)
    with (
        initialize_config_dir(config_dir=str(CONF), version_base="1.3"),
        pytest.raises(ConfigCompositionException, match="metrics.kmeans.n_run"),
    ):
        compose("eval", overrides=["metrics.kmeans.n_run=3"])  # typo: unknown key


def test_yaml_keys_are_the_functions_keyword_arguments(metric_configs):
    for name, cfg in metric_configs.items():
        for node, spec in NODES.items():
            fns = [spec.fn, getattr(spec, "input_options", None)]
            params = {
                k: p
                for fn in fns
                if fn is not None
                for k, p in inspect.signature(fn).parameters.items()
            }
            for key in cfg.get(node, {}):
                assert key in params, f"{name}.yaml: {node}.{key} is not an argument of {fns}"
                assert params[key].kind is inspect.Parameter.KEYWORD_ONLY
    # the paper set is unchanged by the metrics that only the full set configures
    assert "lidar" not in metric_configs["paper"]
    assert "l2_std" not in metric_configs["paper"]
    full = metric_configs["full"]
    assert dict(full.lidar) == {"n_images": 100, "n_views": 10, "delta": 1e-4, "eps": 1e-7}


def test_paper_suite_values_match_references(metric_configs, small_splits):
    tx, ty, ex, ey = small_splits
    cfg = metric_configs["paper"]
    out = compute_metrics(ex, config=cfg, labels=ey, train_embeddings=tx, train_labels=ty, seed=3)
    assert list(out) == [metric_key(m) for m in cfg.compute]
    assert all(isinstance(v, float) for v in out.values())
    parts = kmeans(ex, k=5, n_runs=5, seed=3).labels.numpy()  # the suite's partitions
    assert out["lf/silhouette"] == pytest.approx(silhouette_score(ex, parts[0]), abs=1e-5)
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    agreement = np.mean([adjusted_mutual_info_score(parts[i], parts[j]) for i, j in pairs])
    assert out["lf/kmeans_agreement"] == pytest.approx(agreement, abs=1e-6)
    assert out["sup/kmeans_gt_ami"] == pytest.approx(
        adjusted_mutual_info_score(ey, parts[0]), abs=1e-6
    )
    assert 0 < out["lf/entropy"] <= math.log2(48 * 48)  # 48 x 48 histogram
    assert 0.5 < out["sup/linear_probe_acc"] <= 1.0


def _views_of(x, n=20, q=3, seed=0):
    rng = np.random.default_rng(seed)
    return x[:n, None, :] + rng.normal(scale=0.3, size=(n, q, x.shape[1])).astype(np.float32)


def test_full_suite_keys_with_and_without_labels(metric_configs, small_splits):
    tx, ty, ex, ey = small_splits
    cfg = metric_configs["full"]
    views = _views_of(ex)
    everything = compute_metrics(
        ex, config=cfg, labels=ey, train_embeddings=tx, train_labels=ty, views=views
    )
    assert list(everything) == [metric_key(m) for m in ALL_METRICS]
    unlabelled = compute_metrics(ex, config=_cfg(metric_configs, "full", kmeans__k=5), views=views)
    assert list(unlabelled) == [metric_key(m) for m in LABEL_FREE_METRICS]
    assert all(k.startswith("lf/") for k in unlabelled)
    no_train = compute_metrics(ex, config=cfg, labels=ey, views=views)
    assert list(no_train) == [*[metric_key(m) for m in LABEL_FREE_METRICS], "sup/kmeans_gt_ami"]
    no_views = compute_metrics(ex, config=cfg, labels=ey)
    assert "lf/lidar" not in no_views
    assert no_views == {k: v for k, v in no_train.items() if k != "lf/lidar"}
    for key, value in unlabelled.items():  # same seed, same values with or without labels
        assert value == everything[key]


def test_suite_is_deterministic_given_seed(metric_configs, small_splits):
    tx, ty, ex, ey = small_splits
    cfg = _cfg(metric_configs, "full", silhouette__sample_size=100)
    kw = dict(config=cfg, labels=ey, train_embeddings=tx, train_labels=ty)
    a = compute_metrics(ex, seed=1, **kw)
    assert a == compute_metrics(ex, seed=1, **kw)
    b = compute_metrics(ex, seed=2, **kw)
    assert a["lf/silhouette"] != b["lf/silhouette"]  # a different anchor sample


def test_suite_accepts_torch_tensors_and_inference_mode(metric_configs, small_splits):
    tx, ty, ex, ey = small_splits
    cfg = metric_configs["full"]
    ref = compute_metrics(ex, config=cfg, labels=ey, train_embeddings=tx, train_labels=ty)
    with torch.inference_mode():
        out = compute_metrics(
            torch.from_numpy(ex),
            config=cfg,
            labels=torch.from_numpy(ey),
            train_embeddings=torch.from_numpy(tx),
            train_labels=torch.from_numpy(ty),
        )
    assert out == ref


def test_suite_timings(metric_configs, small_splits):
    _, _, ex, ey = small_splits
    timings = {}
    compute_metrics(ex, config=metric_configs["paper"], labels=ey, timings=timings)
    assert set(timings) == {"kmeans", "silhouette", "kmeans_agreement", "entropy", "kmeans_gt_ami"}
    assert all(t >= 0 for t in timings.values())


def test_non_finite_embeddings_give_nan_for_every_key(metric_configs, small_splits):
    _, _, ex, ey = small_splits
    bad = ex.copy()
    bad[3, 2] = np.inf
    with pytest.warns(RuntimeWarning, match="non-finite.*Every metric is NaN"):
        out = compute_metrics(bad, config=metric_configs["paper"], labels=ey)
    assert list(out) == ["lf/silhouette", "lf/kmeans_agreement", "lf/entropy", "sup/kmeans_gt_ami"]
    assert all(math.isnan(v) for v in out.values())


def test_identical_embeddings_do_not_crash(metric_configs):
    x = np.ones((100, 8), dtype=np.float32)
    y = np.arange(100) % 4
    with pytest.warns(RuntimeWarning):
        out = compute_metrics(
            x, config=metric_configs["full"], labels=y, train_embeddings=x, train_labels=y
        )
    assert math.isnan(out["lf/silhouette"])
    assert out["lf/kmeans_agreement"] == 1.0  # sklearn's convention for one-cluster partitions
    assert out["lf/entropy"] == 0.0
    assert out["sup/kmeans_gt_ami"] == 0.0
    assert math.isnan(out["lf/nesum"])
    assert math.isnan(out["lf/alpha_req"])
    assert out["lf/uniformity"] == pytest.approx(0.0, abs=1e-6)


BAD_CONFIGS = [
    (
        {"kmeans": {"k": 500}},
        r"^metrics.kmeans.k=500 is larger than the number of evaluation samples \(450\): lower "
        r"metrics.kmeans.k or evaluate on more samples.$",
    ),
    ({"compute": ["silhouete"]}, r"Unknown metric 'silhouete' in metrics.compute. Choose from: "),
    ({"kmeans": {"n_runs": 1}}, r"metrics.kmeans.n_runs=1: kmeans_agreement .* needs n_runs >= 2"),
    (
        {"kmeans": {"n_runs": 0}},
        r"metrics.kmeans.n_runs=0 must be an integer >= 1 \(and kmeans_agreement needs n_runs >= 2",
    ),
    (
        {"entropy": {"estimator": "kde"}},
        r"metrics.entropy.estimator='kde' is not a valid option; choose one of: histogram, knn",
    ),
    ({"entropy": {"space": "cosine"}}, r"metrics.entropy.space='cosine' is not a valid option"),
    ({"entropy": {"bins": 0}}, r"metrics.entropy.bins=0 must be an integer >= 1"),
    ({"kmeans_agreement": {"method": "nmi"}}, r"metrics.kmeans_agreement.method='nmi'"),
    ({"entropy": {"foo": 1}}, r"Unknown key metrics.entropy.foo. Valid keys of metrics.entropy: "),
    ({"extra": {}}, r"Unknown key metrics.extra. Valid keys: name, compute, kmeans"),
    ({"linear_probe_acc": {"l2": -1}}, r"metrics.linear_probe_acc.l2=-1 must be a number >= 0"),
    ({"knn_acc": {"temperature": 0}}, r"metrics.knn_acc.temperature=0 must be a number > 0"),
    ({"fewshot_probe_acc": {"fraction": 2.0}}, r"metrics.fewshot_probe_acc.fraction=2.0 must be"),
    ({"alpha_req": {"fit_start": 5, "fit_end": 5}}, r"metrics.alpha_req.fit_end=5 must be larger"),
    ({"silhouette": {"sample_size": 1}}, r"metrics.silhouette.sample_size=1 must be an integer"),
    ({"knn_acc": {"k": 900}}, r"metrics.knn_acc.k=900 is larger than the number of labelled"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS)
def test_check_metrics_config_errors(metric_configs, change, message):
    cfg = _cfg(metric_configs, "full")
    for node, value in change.items():
        if isinstance(value, dict) and isinstance(cfg.get(node), dict):
            cfg[node].update(value)
        else:
            cfg[node] = value
    with pytest.raises(ValueError, match=message):
        check_metrics_config(cfg, n_samples=450, n_classes=10, n_train=500)


def test_k_null_needs_labels(metric_configs):
    cfg = metric_configs["paper"]
    check_metrics_config(cfg, n_samples=100, n_classes=10)  # k = 10 classes: fine
    with pytest.raises(ValueError, match=r"metrics.kmeans.k=null .* set metrics.kmeans.k"):
        check_metrics_config(cfg, n_samples=100, n_classes=None)
    with pytest.raises(ValueError, match=r"metrics.kmeans.k=null .* set metrics.kmeans.k"):
        compute_metrics(np.zeros((100, 4), dtype=np.float32), config=cfg)
    # unlabelled data with only non-k-means metrics needs no k
    check_metrics_config({"name": "x", "compute": ["rankme"]}, n_samples=100, n_classes=None)


def test_compute_metrics_rejects_bad_inputs(metric_configs):
    cfg = _cfg(metric_configs, "paper", kmeans__k=2)
    with pytest.raises(ValueError, match="must be a 2-D array"):
        compute_metrics(np.zeros(10), config=cfg)
    with pytest.raises(ValueError, match="labels has 9 entries but the embeddings have 10 rows"):
        compute_metrics(np.zeros((10, 2)), config=cfg, labels=np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="Pass train_embeddings and train_labels together"):
        compute_metrics(np.zeros((10, 2)), config=cfg, train_embeddings=np.zeros((10, 2)))


@pytest.mark.parametrize("budget", [2**12, 2**27])  # small blocks, and the CUDA budget
def test_results_do_not_depend_on_the_block_size(monkeypatch, metric_configs, small_splits, budget):
    tx, ty, ex, ey = small_splits
    cfg = metric_configs["full"]
    kw = dict(config=cfg, labels=ey, train_embeddings=tx, train_labels=ty, seed=0)
    ref = compute_metrics(ex, **kw)
    monkeypatch.setattr("labelfree.metrics._checks._BLOCK_ENTRIES_CPU", budget)
    out = compute_metrics(ex, **kw)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


# --- the edge cases of issue 15, through the suite --------------------------------------------


def test_probes_on_identical_nonzero_embeddings_predict_the_majority_class_in_the_suite():
    y = np.repeat([0, 1, 1, 1, 2], 20)  # majority class 1: 60 of 100
    x = np.tile(np.random.default_rng(0).normal(size=6) * 3, (100, 1)).astype(np.float32)
    cfg = {"name": "t", "compute": ["linear_probe_acc", "fewshot_probe_acc"]}
    cfg["fewshot_probe_acc"] = {"fraction": 0.5}
    out = compute_metrics(x, config=cfg, labels=y, train_embeddings=x, train_labels=y)
    assert out == {"sup/linear_probe_acc": 0.6, "sup/fewshot_probe_acc": pytest.approx(0.6)}


def test_histogram_entropy_of_2d_embeddings_is_rotation_invariant_in_the_suite():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5000, 2)) * [3.0, 1.0]
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cfg = {"name": "t", "compute": ["entropy"]}
    h = compute_metrics(z, config=cfg)["lf/entropy"]
    assert compute_metrics(z @ rotation, config=cfg)["lf/entropy"] == pytest.approx(h, abs=1e-9)


@pytest.mark.parametrize(("n", "d"), [(20, 64), (3, 10)])
def test_rankme_with_fewer_samples_than_dimensions_in_the_suite(n, d):
    z = np.random.default_rng(n).normal(size=(n, d)) * np.linspace(0.5, 2, d)
    sigma = np.linalg.svd(z, compute_uv=False)  # min(N, D) values, no phantom zeros
    p = sigma / sigma.sum() + 1e-7
    reference = float(np.exp(-(p * np.log(p)).sum()))
    for compute in (["rankme"], ["rankme", "alpha_req", "nesum"]):  # alone and shared
        out = compute_metrics(z, config={"name": "t", "compute": compute})
        assert out["lf/rankme"] == pytest.approx(reference, rel=1e-9)


def test_alpha_req_window_past_the_rank_warns_in_the_suite():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(32, 32)))[0][:5]
    x = ((rng.normal(size=(2000, 5)) * np.arange(1, 6) ** -1.0) @ basis).astype(np.float32)
    cfg = {"name": "t", "compute": ["rankme", "alpha_req", "nesum"]}
    with pytest.warns(RuntimeWarning, match=r"ranks 1\.\.32 extends past the numerical rank 5"):
        out = compute_metrics(x, config=cfg)
    assert out["lf/alpha_req"] == pytest.approx(2.0, abs=0.1)  # fitted on ranks 1..5
