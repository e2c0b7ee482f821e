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

What runs, what each metric needs and how its options are checked is the table in
:mod:`labelfree.metrics.registry`; this module only walks it, so it names no metric.
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

import labelfree.metrics.registry as registry
from labelfree.config import as_container
from labelfree.metrics._checks import as_embeddings, as_labels, as_views
from labelfree.metrics.registry import DataSizes, MetricSpec, metric_key

log = logging.getLogger(__name__)

__all__ = ["Evaluation", "check_metrics_config", "compute_metrics", "input_options"]

_TOP_KEYS = ("name", "compute", *registry.NODES)


class Evaluation:
    """One compute_metrics call: its inputs, config and seed, and the providers' values.

    ``evaluation[name]`` is a caller input or a provider's value; a provider is computed on
    first use (with the providers it reads) and kept for the rest of the call.

    Args:
        inputs: The caller inputs that were given (:data:`~labelfree.metrics.registry.INPUTS`).
        config: The validated ``metrics`` config, plain dicts.
        sizes: The data sizes the config was checked against.
        seed: The seed every random choice derives from.
        timings: Receives the seconds of each timed provider, if given.
    """

    def __init__(
        self,
        inputs: dict[str, Tensor],
        *,
        config: dict[str, Any],
        sizes: DataSizes,
        seed: int,
        timings: dict[str, float] | None,
    ) -> None:
        self.config, self.sizes, self.seed = config, sizes, seed
        self._values: dict[str, Any] = dict(inputs)
        self._timings = timings

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            provider = registry.PROVIDERS[name]
            start = time.perf_counter()
            self._values[name] = provider.compute(self)
            if provider.timing is not None and self._timings is not None:
                self._timings[provider.timing] = time.perf_counter() - start
        return self._values[name]

    def options(self, fn: Callable[..., Any]) -> dict[str, Any]:
        """Keyword arguments of ``fn`` from its config node, plus ``seed`` if it takes one.

        Keys of the node that are not ``fn``'s (a metric's ``input_options``) are left out.
        """
        params = inspect.signature(fn).parameters
        node = self.config.get(fn.__name__) or {}
        options = {key: value for key, value in node.items() if key in params}
        if "seed" in params:
            options["seed"] = self.seed
        return options

    def call(self, spec: MetricSpec) -> float:
        """Run one metric; its needs are resolved (and providers computed) before the clock."""
        params = inspect.signature(spec.fn).parameters
        by_name = {
            n for n in spec.needs if n in params and params[n].kind is params[n].KEYWORD_ONLY
        }
        args = [self[n] for n in spec.needs if n not in by_name]
        kwargs = {n: self[n] for n in by_name} | self.options(spec.fn)
        start = time.perf_counter()
        value = float(spec.fn(*args, **kwargs))
        if self._timings is not None:
            self._timings[spec.name] = time.perf_counter() - start
        return value


def _plan(names: list[str], sizes: DataSizes) -> tuple[list[MetricSpec], list[str]]:
    """Split the requested metrics into those the inputs allow and the others.

    Returns:
        The specs that can run, in ``ALL_METRICS`` order, and ``"<name> (<why not>)"`` for the
        others, the reason being the first input (in ``INPUTS`` order) that a metric misses.
    """
    given = {"embeddings"}  # the inputs there, told by their sizes
    if sizes.n_classes is not None:
        given.add("labels")
    if sizes.n_train is not None:
        given.update(("train_embeddings", "train_labels"))
    if sizes.views is not None:
        given.add("views")
    run, skipped = [], []
    for spec in registry.SPECS.values():
        if spec.name in names:
            missing = [i for i in registry.inputs_of(spec.needs) if i not in given]
            if missing:
                skipped.append(f"{spec.name} ({registry.INPUTS[missing[0]]})")
            else:
                run.append(spec)
    return run, skipped


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _config_dict(config: Any) -> dict[str, Any]:
    """The ``metrics`` node as a plain dict with a plain dict per option node."""
    cfg = as_container(config)
    if not isinstance(cfg, Mapping):
        raise ValueError(
            f"The metrics config must be a mapping (the `metrics` node); got "
            f"{type(config).__name__}."
        )
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}


def _compute_list(cfg: dict[str, Any]) -> list[str]:
    names = cfg.get("compute")
    if names is None:
        raise ValueError(
            "metrics.compute is missing: list the metrics to compute, e.g. "
            f"metrics.compute=[{','.join(registry.LABEL_FREE_METRICS[:3])}]."
        )
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise ValueError(f"metrics.compute={names!r} must be a list of metric names.")
    for name in names:
        if name not in registry.ALL_METRICS:
            raise ValueError(
                f"Unknown metric {name!r} in metrics.compute. Choose from: "
                f"{', '.join(registry.ALL_METRICS)}."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"metrics.compute={list(names)} lists a metric twice.")
    return list(names)


def _checked(cfg: dict[str, Any], sizes: DataSizes) -> dict[str, Any]:
    """Validate ``cfg`` (see :func:`check_metrics_config`); return it with empty nodes as {}."""
    for key in cfg:
        if key not in _TOP_KEYS:
            raise ValueError(f"Unknown key metrics.{key}. Valid keys: {', '.join(_TOP_KEYS)}.")
    for node, spec in registry.NODES.items():
        value = cfg.get(node, {})
        if value is None:
            value = cfg[node] = {}
        if not isinstance(value, Mapping):
            raise ValueError(f"metrics.{node}={value!r} must be a mapping of options.")
        valid = registry.node_keys(spec)
        for key in value:
            if key not in valid:
                listed = ", ".join(valid) if valid else "(none)"
                raise ValueError(
                    f"Unknown key metrics.{node}.{key}. Valid keys of metrics.{node}: {listed}."
                )
    names = _compute_list(cfg)
    for node, spec in registry.NODES.items():
        options = cfg.get(node, {})
        for key, rule in spec.rules.items():
            if key in options:
                rule(f"{node}.{key}", options[key], options)
    if sizes.n_samples < 2:
        raise ValueError(f"Metrics need at least 2 evaluation samples; got {sizes.n_samples}.")
    active, _ = _plan(names, sizes)
    for name in registry.providers_of(need for spec in active for need in spec.needs):
        if registry.PROVIDERS[name].check is not None:
            registry.PROVIDERS[name].check(cfg, sizes)
    for spec in active:
        if spec.check is not None:
            spec.check(cfg, sizes)
    return cfg


def check_metrics_config(
    config: Any, *, n_samples: int, n_classes: int | None, n_train: int | None = None
) -> None:
    """Validate a ``metrics`` config before any work; raise a one-line ``ValueError`` if bad.

    Checks: known top-level keys and metric names (``metrics.compute``), node keys equal to the
    keyword arguments of the matching function, types and ranges of every value, and the
    data-dependent constraints: ``kmeans.k`` (null = number of classes, needs labels) between 2
    and ``n_samples``, ``kmeans.n_runs >= 2`` when ``kmeans_agreement`` is requested, the kNN
    entropy's ``k < n_samples``, ``knn_acc.k <= n_train``, UMAP importable when requested.
    The rules themselves sit with each metric in :mod:`labelfree.metrics.registry`.

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
    _checked(_config_dict(config), DataSizes(n_samples, n_classes, n_train))


def input_options(config: Any, name: str) -> Any:
    """How a caller should make metric ``name``'s inputs, from the metric's config node.

    The keys of ``metrics.<name>`` that belong to the spec's ``input_options`` function
    (:class:`~labelfree.metrics.registry.MetricSpec`), passed to it; unset keys take its
    defaults. For ``lidar``: ``(n_images, n_views)``, see
    :func:`~labelfree.metrics.lidar.lidar_views`.

    Args:
        config: The ``metrics`` node (DictConfig or plain mapping).
        name: A metric name with ``input_options`` (``lidar``).

    Returns:
        What the ``input_options`` function returns.

    Raises:
        ValueError: for a metric without input options, or a bad value.

    Examples:
        >>> input_options({"compute": ["lidar"], "lidar": {"n_views": 4, "delta": 1e-3}}, "lidar")
        (100, 4)
    """
    spec = registry.SPECS.get(name)
    if spec is None or spec.input_options is None:
        with_options = [n for n, s in registry.SPECS.items() if s.input_options is not None]
        raise ValueError(
            f"Metric {name!r} has no input options; metrics with them: {', '.join(with_options)}."
        )
    node = _config_dict(config).get(name) or {}
    params = inspect.signature(spec.input_options).parameters
    return spec.input_options(**{k: v for k, v in node.items() if k in params})


# --------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------


def compute_metrics(
    embeddings: Tensor | np.ndarray,
    *,
    config: Any,
    labels: Tensor | np.ndarray | None = None,
    train_embeddings: Tensor | np.ndarray | None = None,
    train_labels: Tensor | np.ndarray | None = None,
    views: Tensor | np.ndarray | None = None,
    seed: int = 0,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """Compute the metrics enabled in ``config`` on one evaluation split.

    Label-free metrics run when listed in ``config["compute"]`` (``lidar`` only when ``views``
    are given); label-based ones only when ``labels`` are given, and the probes and kNN
    (``linear_probe_acc``, ``knn_acc``, ``fewshot_probe_acc``) only when ``train_embeddings``
    and ``train_labels`` are given too; a metric without its inputs is skipped and the log says
    why. k-means runs once (``kmeans.n_runs`` seeded initialisations) and its partitions feed
    silhouette (C1), agreement (C1..Cn) and ``kmeans_gt_ami`` (C1). ``kmeans.k: null`` means the
    number of distinct ``labels``. RankMe, alpha-ReQ and NESum share one eigenvalue spectrum
    (the ``spectrum`` provider of :mod:`~labelfree.metrics.registry`).

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
        views: ``(n, q, d)`` embeddings of ``q`` augmented views of each of ``n`` images, for
            LiDAR (``metrics.lidar.n_images`` and ``n_views`` say how many a caller should
            make; an array of another size is used as given), optional.
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
    cfg = _config_dict(config)
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
    v = bad_views = None
    if views is not None:
        try:
            v = as_views(views).to(device)
        except ValueError as err:
            if "non-finite" not in str(err):
                raise
            bad_views = err  # the metrics needing the views are NaN (below); the others run
    sizes = DataSizes(
        n,
        n_classes,
        int(tx.shape[0]) if tx is not None else None,
        views=tuple(views.shape[:2]) if views is not None else None,
    )
    cfg = _checked(cfg, sizes)
    run, skipped = _plan(_compute_list(cfg), sizes)
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
        return {metric_key(spec.name): math.nan for spec in run}

    nan = set()
    if bad_views is not None:
        nan = {spec.name for spec in run if "views" in registry.inputs_of(spec.needs)}
        if nan:
            warnings.warn(
                f"{bad_views} NaN: {', '.join(sorted(nan))}.", RuntimeWarning, stacklevel=2
            )
    inputs = {"embeddings": x, "labels": y, "train_embeddings": tx, "train_labels": ty, "views": v}
    evaluation = Evaluation(
        {name: value for name, value in inputs.items() if value is not None},
        config=cfg,
        sizes=sizes,
        seed=seed,
        timings=timings,
    )
    return {
        metric_key(spec.name): math.nan if spec.name in nan else evaluation.call(spec)
        for spec in tqdm(run, desc="metrics", leave=False, disable=None)
    }
