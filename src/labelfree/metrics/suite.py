"""The metrics suite: one entry point for training (each scheduled epoch) and ``labelfree-eval``.

The ``metrics`` config group (``conf/metrics/paper.yaml``, ``conf/metrics/full.yaml``) selects
what runs. Its layout is::

    name: paper
    compute: [silhouette, kmeans_agreement, ...]   # metric names, see ALL_METRICS
    kmeans: {k: null, n_runs: 5, ...}             # keyword arguments of kmeans()
    silhouette: {sample_size: ...}                # keyword arguments of silhouette()
    entropy: {...}                                # ... of entropy(), and so on per metric

Every key below a metric's node is a keyword argument of the function of the same name (no
renaming layer); ``seed`` comes from the caller. Results use the DESIGN.md record keys:
``lf/<name>`` for label-free metrics, ``sup/<name>`` for label-based ones.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.metrics._checks import as_embeddings, as_labels
from labelfree.metrics.agreement import kmeans_agreement, kmeans_gt_ami
from labelfree.metrics.entropy import ESTIMATORS, PROJECTIONS, SPACES, entropy, import_umap
from labelfree.metrics.kmeans import kmeans
from labelfree.metrics.probe import fewshot_probe_acc, knn_acc, linear_probe_acc
from labelfree.metrics.silhouette import silhouette
from labelfree.metrics.spectral import alpha_req, nesum, rankme, uniformity

log = logging.getLogger(__name__)

__all__ = [
    "ALL_METRICS",
    "LABEL_FREE_METRICS",
    "LABEL_METRICS",
    "check_metrics_config",
    "compute_metrics",
    "metric_key",
]

LABEL_FREE_METRICS = (
    "silhouette",
    "kmeans_agreement",
    "entropy",
    "rankme",
    "alpha_req",
    "nesum",
    "uniformity",
)
LABEL_METRICS = ("kmeans_gt_ami", "linear_probe_acc", "knn_acc", "fewshot_probe_acc")
ALL_METRICS = LABEL_FREE_METRICS + LABEL_METRICS
_KMEANS_METRICS = ("silhouette", "kmeans_agreement", "kmeans_gt_ami")
_TRAIN_METRICS = ("linear_probe_acc", "knn_acc", "fewshot_probe_acc")

# Config node -> function whose keyword arguments the node holds.
_NODES: dict[str, Callable[..., Any]] = {
    "kmeans": kmeans,
    "silhouette": silhouette,
    "kmeans_agreement": kmeans_agreement,
    "entropy": entropy,
    "rankme": rankme,
    "alpha_req": alpha_req,
    "nesum": nesum,
    "uniformity": uniformity,
    "kmeans_gt_ami": kmeans_gt_ami,
    "linear_probe_acc": linear_probe_acc,
    "knn_acc": knn_acc,
    "fewshot_probe_acc": fewshot_probe_acc,
}
_TOP_KEYS = ("name", "compute", *_NODES)


def metric_key(name: str) -> str:
    """Record key of a metric name: ``lf/<name>`` or ``sup/<name>`` (DESIGN.md).

    Examples:
        >>> metric_key("silhouette"), metric_key("linear_probe_acc")
        ('lf/silhouette', 'sup/linear_probe_acc')
    """
    return ("sup/" if name in LABEL_METRICS else "lf/") + name


def _node_keys(fn: Callable[..., Any]) -> tuple[str, ...]:
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "seed")


def _takes_seed(fn: Callable[..., Any]) -> bool:
    return "seed" in inspect.signature(fn).parameters


def _as_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a DictConfig (resolved) or mapping; omegaconf imported lazily."""
    if isinstance(config, Mapping) and type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    if not isinstance(config, Mapping):
        raise ValueError(
            f"The metrics config must be a mapping (the `metrics` node); got "
            f"{type(config).__name__}."
        )
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in config.items()}


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _fail(key: str, value: Any, rule: str) -> None:
    raise ValueError(f"metrics.{key}={value!r} {rule}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (
        isinstance(v, int | float | np.integer | np.floating)
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    )


def _int(key: str, v: Any, minimum: int, *, optional: bool = False, fix: str = "") -> None:
    if v is None and optional:
        return
    if not _is_int(v) or v < minimum:
        null = " or null" if optional else ""
        _fail(key, v, f"must be an integer >= {minimum}{null}{fix}")


def _num(key: str, v: Any, *, positive: bool) -> None:
    if not _is_num(v) or (float(v) <= 0 if positive else float(v) < 0):
        _fail(key, v, f"must be a number {'> 0' if positive else '>= 0'}")


def _choice(key: str, v: Any, choices: tuple[str, ...]) -> None:
    if v not in choices:
        _fail(key, v, f"is not a valid option; choose one of: {', '.join(choices)}")


def _check_values(cfg: dict[str, Any]) -> None:
    """Type and range of every known option (independent of the data)."""
    rules: dict[tuple[str, str], Callable[[str, Any], None]] = {
        ("kmeans", "k"): lambda k, v: _int(k, v, 2, optional=True),
        ("kmeans", "n_runs"): lambda k, v: _int(
            k, v, 1, fix=" (and kmeans_agreement needs n_runs >= 2)"
        ),
        ("kmeans", "max_iter"): lambda k, v: _int(k, v, 1),
        ("kmeans", "tol"): lambda k, v: _num(k, v, positive=False),
        ("kmeans", "n_local_trials"): lambda k, v: _int(k, v, 1, optional=True),
        ("silhouette", "sample_size"): lambda k, v: _int(k, v, 2, optional=True),
        ("kmeans_agreement", "method"): lambda k, v: _choice(k, v, ("ami", "ari")),
        ("entropy", "estimator"): lambda k, v: _choice(k, v, ESTIMATORS),
        ("entropy", "space"): lambda k, v: _choice(k, v, SPACES),
        ("entropy", "projection"): lambda k, v: _choice(k, v, PROJECTIONS),
        ("entropy", "pca_dim"): lambda k, v: _int(k, v, 1),
        ("entropy", "k"): lambda k, v: _int(k, v, 1),
        ("entropy", "bins"): lambda k, v: _int(k, v, 1),
        ("entropy", "max_samples"): lambda k, v: _int(k, v, 2, optional=True),
        ("rankme", "eps"): lambda k, v: _num(k, v, positive=False),
        ("rankme", "max_samples"): lambda k, v: _int(k, v, 1, optional=True),
        ("alpha_req", "fit_start"): lambda k, v: _int(k, v, 1),
        ("alpha_req", "fit_end"): lambda k, v: _int(k, v, 2, optional=True),
        ("uniformity", "t"): lambda k, v: _num(k, v, positive=True),
        ("uniformity", "max_samples"): lambda k, v: _int(k, v, 2, optional=True),
        ("linear_probe_acc", "l2"): lambda k, v: _num(k, v, positive=False),
        ("linear_probe_acc", "max_iter"): lambda k, v: _int(k, v, 1),
        ("knn_acc", "k"): lambda k, v: _int(k, v, 1),
        ("knn_acc", "temperature"): lambda k, v: _num(k, v, positive=True),
        ("fewshot_probe_acc", "fraction"): lambda k, v: _num(k, v, positive=True),
        ("fewshot_probe_acc", "n_draws"): lambda k, v: _int(k, v, 1),
        ("fewshot_probe_acc", "l2"): lambda k, v: _num(k, v, positive=False),
        ("fewshot_probe_acc", "max_iter"): lambda k, v: _int(k, v, 1),
    }
    for (node, key), rule in rules.items():
        if key in cfg.get(node, {}):
            rule(f"{node}.{key}", cfg[node][key])
    standardize = cfg.get("linear_probe_acc", {}).get("standardize", True)
    if not isinstance(standardize, bool):
        _fail("linear_probe_acc.standardize", standardize, "must be true or false")
    fraction = cfg.get("fewshot_probe_acc", {}).get("fraction", 0.01)
    if float(fraction) > 1:
        _fail("fewshot_probe_acc.fraction", fraction, "must be in (0, 1]")
    ar = cfg.get("alpha_req", {})
    if ar.get("fit_end") is not None and ar["fit_end"] <= ar.get("fit_start", 1):
        _fail("alpha_req.fit_end", ar["fit_end"], "must be larger than metrics.alpha_req.fit_start")


def _compute_list(cfg: dict[str, Any]) -> list[str]:
    names = cfg.get("compute")
    if names is None:
        raise ValueError(
            "metrics.compute is missing: list the metrics to compute, e.g. "
            f"metrics.compute=[{','.join(LABEL_FREE_METRICS[:3])}]."
        )
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise ValueError(f"metrics.compute={names!r} must be a list of metric names.")
    for name in names:
        if name not in ALL_METRICS:
            raise ValueError(
                f"Unknown metric {name!r} in metrics.compute. Choose from: "
                f"{', '.join(ALL_METRICS)}."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"metrics.compute={list(names)} lists a metric twice.")
    return list(names)


def _resolve_k(cfg: dict[str, Any], n_samples: int, n_classes: int | None) -> int:
    k = cfg.get("kmeans", {}).get("k")
    if k is None:
        if n_classes is None:
            raise ValueError(
                "metrics.kmeans.k=null means 'the number of classes', but no labels are "
                "available to count them: set metrics.kmeans.k to the number of clusters."
            )
        if n_classes < 2:
            raise ValueError(
                f"metrics.kmeans.k=null would use the number of classes ({n_classes}), but "
                "k-means metrics need k >= 2: set metrics.kmeans.k."
            )
        k = n_classes
    if k > n_samples:
        raise ValueError(
            f"metrics.kmeans.k={k} is larger than the number of evaluation samples "
            f"({n_samples}): lower metrics.kmeans.k or evaluate on more samples."
        )
    return int(k)


def check_metrics_config(
    config: Any, *, n_samples: int, n_classes: int | None, n_train: int | None = None
) -> None:
    """Validate a ``metrics`` config before any work; raise a one-line ``ValueError`` if bad.

    Checks: known top-level keys and metric names (``metrics.compute``), node keys equal to the
    keyword arguments of the matching function, types and ranges of every value, and the
    data-dependent constraints: ``kmeans.k`` (null = number of classes, needs labels) between 2
    and ``n_samples``, ``kmeans.n_runs >= 2`` when ``kmeans_agreement`` is requested, the kNN
    entropy's ``k < n_samples``, ``knn_acc.k <= n_train``, UMAP importable when requested.

    Args:
        config: The ``metrics`` node (DictConfig or plain mapping).
        n_samples: Number of evaluation samples.
        n_classes: Number of distinct labels of the evaluation split, or ``None`` if unlabelled.
        n_train: Number of labelled train samples for the probes, or ``None``.

    Raises:
        ValueError: naming the key, the value and the fix.

    Examples:
        >>> cfg = {"name": "x", "compute": ["silhouette"], "kmeans": {"k": 500}}
        >>> check_metrics_config(cfg, n_samples=450, n_classes=None)
        Traceback (most recent call last):
        ...
        ValueError: metrics.kmeans.k=500 is larger than the number of evaluation samples (450): lower metrics.kmeans.k or evaluate on more samples.
    """  # noqa: E501
    cfg = _as_dict(config)
    for key in cfg:
        if key not in _TOP_KEYS:
            raise ValueError(f"Unknown key metrics.{key}. Valid keys: {', '.join(_TOP_KEYS)}.")
    for node, fn in _NODES.items():
        value = cfg.get(node, {})
        if value is None:
            value = cfg[node] = {}
        if not isinstance(value, Mapping):
            raise ValueError(f"metrics.{node}={value!r} must be a mapping of options.")
        valid = _node_keys(fn)
        for key in value:
            if key not in valid:
                listed = ", ".join(valid) if valid else "(none)"
                raise ValueError(
                    f"Unknown key metrics.{node}.{key}. Valid keys of metrics.{node}: {listed}."
                )
    names = _compute_list(cfg)
    _check_values(cfg)
    if n_samples < 2:
        raise ValueError(f"Metrics need at least 2 evaluation samples; got {n_samples}.")
    has_labels = n_classes is not None
    active = [m for m in names if m in LABEL_FREE_METRICS or has_labels]
    if any(m in _KMEANS_METRICS for m in active):
        k = _resolve_k(cfg, n_samples, n_classes)
        if "silhouette" in active and k > n_samples - 1:
            raise ValueError(
                f"metrics.kmeans.k={k} leaves no room for the silhouette on {n_samples} samples "
                "(needs k <= N - 1): lower metrics.kmeans.k."
            )
        n_runs = cfg.get("kmeans", {}).get("n_runs", 5)
        if "kmeans_agreement" in active and n_runs < 2:
            raise ValueError(
                f"metrics.kmeans.n_runs={n_runs}: kmeans_agreement compares partitions from "
                "different initialisations and needs n_runs >= 2. Raise metrics.kmeans.n_runs "
                "or remove kmeans_agreement from metrics.compute."
            )
    ent = cfg.get("entropy", {})
    if "entropy" in active:
        if ent.get("estimator", "histogram") == "knn" and ent.get("k", 3) >= n_samples:
            _fail("entropy.k", ent.get("k", 3), f"must be smaller than N ({n_samples})")
        if ent.get("estimator", "histogram") == "histogram" and ent.get("projection") == "umap":
            import_umap()
    if "knn_acc" in active and n_train is not None:
        k_knn = cfg.get("knn_acc", {}).get("k", 20)
        if k_knn > n_train:
            raise ValueError(
                f"metrics.knn_acc.k={k_knn} is larger than the number of labelled train "
                f"samples ({n_train}): lower metrics.knn_acc.k."
            )


# --------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------


def _kwargs(cfg: dict[str, Any], node: str, seed: int, **extra: Any) -> dict[str, Any]:
    kw = dict(cfg.get(node, {}))
    kw.update(extra)
    if _takes_seed(_NODES[node]):
        kw["seed"] = seed
    return kw


def compute_metrics(
    embeddings: Tensor | np.ndarray,
    *,
    config: Any,
    labels: Tensor | np.ndarray | None = None,
    train_embeddings: Tensor | np.ndarray | None = None,
    train_labels: Tensor | np.ndarray | None = None,
    seed: int = 0,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """Compute the metrics enabled in ``config`` on one evaluation split.

    Label-free metrics always run when listed in ``config["compute"]``; label-based ones only
    when ``labels`` are given, and the probes and kNN (``linear_probe_acc``, ``knn_acc``,
    ``fewshot_probe_acc``) only when ``train_embeddings`` and ``train_labels`` are given too.
    k-means runs once (``kmeans.n_runs`` seeded initialisations) and its partitions feed
    silhouette (C1), agreement (C1..Cn) and ``kmeans_gt_ami`` (C1). ``kmeans.k: null`` means the
    number of distinct ``labels``.

    Everything runs on the device of ``embeddings`` (a CUDA tensor stays on the GPU; numpy
    inputs of the other arguments are moved to that device). Deterministic given ``seed`` and
    the device. Embeddings holding NaN or inf (a diverged encoder) do not raise: every requested
    key is NaN and a ``RuntimeWarning`` says why, so the record can still be written.

    Args:
        embeddings: ``(N, D)`` evaluation-split embeddings (numpy or torch, CPU or CUDA).
        config: The ``metrics`` config node (DictConfig or plain mapping).
        labels: ``(N,)`` integer labels of the evaluation split, optional.
        train_embeddings: ``(M, D)`` labelled train-split embeddings for the probes, optional.
        train_labels: ``(M,)`` labels of the train split.
        seed: Seed of every random choice (k-means seeding, subsamples, few-shot draws).
        timings: Optional dict that receives the seconds spent per metric (and ``kmeans``).

    Returns:
        ``{record key: float}`` with the DESIGN.md keys (``lf/...``, ``sup/...``) of the metrics
        that ran, in the order of ``ALL_METRICS``.

    Raises:
        ValueError: for an invalid config (see :func:`check_metrics_config`) or bad input shapes.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(0, 1, (50, 8)), rng.normal(6, 1, (50, 8))])
        >>> cfg = {"name": "demo", "compute": ["silhouette", "kmeans_agreement"],
        ...        "kmeans": {"k": 2, "n_runs": 3}}
        >>> out = compute_metrics(x.astype(np.float32), config=cfg, seed=0)
        >>> sorted(out), round(out["lf/kmeans_agreement"], 3)
        (['lf/kmeans_agreement', 'lf/silhouette'], 1.0)
    """
    cfg = _as_dict(config)
    if isinstance(embeddings, np.ndarray):
        embeddings = torch.from_numpy(np.ascontiguousarray(embeddings))
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
        as_embeddings(embeddings)  # raises the standard message
    device = embeddings.device
    n = int(embeddings.shape[0])
    y = as_labels(labels, n=n, device=device) if labels is not None else None
    n_classes = int(torch.unique(y).numel()) if y is not None else None
    has_train = train_embeddings is not None and train_labels is not None
    if (train_embeddings is None) != (train_labels is None):
        raise ValueError("Pass train_embeddings and train_labels together (or neither).")
    tx = ty = None
    if has_train:
        tx = train_embeddings
        if isinstance(tx, np.ndarray):
            tx = torch.from_numpy(np.ascontiguousarray(tx))
        if isinstance(tx, Tensor):
            tx = tx.to(device)
        ty = as_labels(train_labels, n=int(tx.shape[0]), device=device, name="train_labels")
    check_metrics_config(
        cfg,
        n_samples=n,
        n_classes=n_classes,
        n_train=int(tx.shape[0]) if tx is not None else None,
    )
    names = _compute_list(cfg)
    run: list[str] = []
    skipped: list[str] = []
    for name in ALL_METRICS:
        if name not in names:
            continue
        if name in LABEL_METRICS and y is None:
            skipped.append(f"{name} (no labels)")
        elif name in _TRAIN_METRICS and not has_train:
            skipped.append(f"{name} (no train_embeddings/train_labels)")
        else:
            run.append(name)
    if skipped:
        log.info("metrics skipped: %s", ", ".join(skipped))

    try:
        x = as_embeddings(embeddings)
        if tx is not None:
            tx = as_embeddings(tx, name="train_embeddings")
    except ValueError as err:
        if "non-finite" not in str(err):
            raise
        warnings.warn(f"{err} Every metric is NaN.", RuntimeWarning, stacklevel=2)
        return {metric_key(name): math.nan for name in run}

    out: dict[str, float] = {}
    partitions = None
    if any(name in _KMEANS_METRICS for name in run):
        start = time.perf_counter()
        k = _resolve_k(cfg, n, n_classes)
        km_kwargs = _kwargs(cfg, "kmeans", seed, k=k)
        partitions = kmeans(x, **km_kwargs).labels
        if timings is not None:
            timings["kmeans"] = time.perf_counter() - start
    for name in tqdm(run, desc="metrics", leave=False, disable=None):
        start = time.perf_counter()
        if name == "silhouette":
            value = silhouette(x, partitions[0], **_kwargs(cfg, name, seed))
        elif name == "kmeans_agreement":
            value = kmeans_agreement(partitions, **_kwargs(cfg, name, seed))
        elif name == "kmeans_gt_ami":
            value = kmeans_gt_ami(partitions[0], y)
        elif name in _TRAIN_METRICS:
            value = _NODES[name](tx, ty, x, y, **_kwargs(cfg, name, seed))
        else:
            value = _NODES[name](x, **_kwargs(cfg, name, seed))
        out[metric_key(name)] = float(value)
        if timings is not None:
            timings[name] = time.perf_counter() - start
    return out
