"""The metric registry: every metric of the suite, what it needs and how its options are checked.

A metric is one :class:`MetricSpec` in :data:`METRICS`: its function (whose name is the metric's
name and its ``metrics.<name>`` config node), what the function takes besides its options
(``needs``), the rules of its option values and, optionally, a check against the data sizes.
What several metrics share is a :class:`Provider` in :data:`PROVIDERS`, computed lazily, once
per evaluation (the k-means partitions: C1..Cn for the agreement, C1 for the silhouette and
``kmeans_gt_ami``; the eigenvalue spectrum of RankMe, alpha-ReQ and NESum).
:func:`labelfree.metrics.suite.compute_metrics` runs the specs in this table and has no
per-metric branch.

Adding a metric is a function plus a spec in :data:`METRICS`::

    def my_score(x: Tensor | np.ndarray, *, alpha: float = 1.0, seed: int = 0) -> float:
        ...  # pure; options keyword-only; `seed` only if it draws random numbers

    MetricSpec(my_score, needs=("embeddings",), rules={"alpha": number(positive=True)})

then ``my_score`` in ``metrics.compute`` and a ``my_score: {alpha: 1.0}`` node in the YAML.
Adding a shared intermediate is a provider in :data:`PROVIDERS` and a need of its name. The
spectral metrics share one (``spectrum``: one float64 pass over the embeddings for RankMe,
alpha-ReQ and NESum, see :func:`_shared_spectrum`); a need listed by a function's keyword-only
argument of the same name is passed by keyword and is never a config key::

    Provider("spectrum", _shared_spectrum, timing="spectrum")
    MetricSpec(rankme, needs=("embeddings", "spectrum"), rules=...)  # rankme(x, *, spectrum)

A new caller input (LiDAR's augmented views) is an entry of :data:`INPUTS`, with the reason a
metric that needs it is skipped without it, and an argument of ``compute_metrics``. How the
caller makes it can be configured in the metric's node: ``input_options`` (LiDAR's ``n_images``
and ``n_views``, read by the caller through :func:`labelfree.metrics.suite.input_options`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from labelfree.metrics._checks import (
    Rule,
    all_of,
    boolean,
    fail_option,
    fraction,
    integer,
    larger_than,
    number,
    one_of,
)
from labelfree.metrics.agreement import kmeans_agreement, kmeans_gt_ami
from labelfree.metrics.entropy import ESTIMATORS, PROJECTIONS, SPACES, entropy, import_umap
from labelfree.metrics.kmeans import kmeans
from labelfree.metrics.lidar import lidar, lidar_views
from labelfree.metrics.probe import fewshot_probe_acc, knn_acc, linear_probe_acc
from labelfree.metrics.silhouette import silhouette
from labelfree.metrics.spectral import (
    Spectrum,
    _spectrum,
    alpha_req,
    l2_std,
    nesum,
    rankme,
    uniformity,
)
from labelfree.records import metric_key as record_key

__all__ = [
    "ALL_METRICS",
    "INPUTS",
    "LABEL_FREE_METRICS",
    "LABEL_METRICS",
    "METRICS",
    "NODES",
    "PROVIDERS",
    "SPECS",
    "DataSizes",
    "MetricSpec",
    "Provider",
    "inputs_of",
    "metric_key",
    "node_keys",
    "providers_of",
    "resolve_k",
]


#: What a caller of compute_metrics can pass, in the order a missing one is reported, with the
#: reason the "metrics skipped" log line gives for a metric that needs it.
INPUTS: dict[str, str] = {
    "embeddings": "no embeddings",  # always given
    "labels": "no labels",
    "train_embeddings": "no train_embeddings/train_labels",
    "train_labels": "no train_embeddings/train_labels",
    "views": "no augmented views",
}
_LABEL_INPUTS = ("labels", "train_labels")  # a metric needing one of them is label-based


@dataclass(frozen=True)
class DataSizes:
    """What the data-dependent checks see: sizes, known before anything is computed.

    Attributes:
        n_samples: Rows of the evaluation split.
        n_classes: Distinct labels of the evaluation split, ``None`` if unlabelled.
        n_train: Rows of the labelled train split for the probes, ``None`` if none.
        views: ``(n_images, n_views)`` of LiDAR's augmented views, ``None`` if none.
    """

    n_samples: int
    n_classes: int | None
    n_train: int | None
    views: tuple[int, int] | None = None


Check = Callable[[dict[str, Any], DataSizes], None]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its function, what it needs, the rules of its options.

    Attributes:
        fn: A pure function returning a float. Its name is the metric's name and its config node
            ``metrics.<name>``, whose keys are its keyword-only arguments (but ``seed`` and the
            names in ``needs``); it gets the evaluation's ``seed`` if it takes one.
        needs: What ``fn`` takes besides its options, each a caller input (:data:`INPUTS`) or a
            provider (:data:`PROVIDERS`): passed by keyword where ``fn`` has a keyword-only
            argument of that name, else positionally, in this order. The metric is skipped when
            an input behind them is missing, and is label-based (``sup/``) if it needs labels.
        rules: ``option -> rule`` for the node's values, independent of the data (run on every
            check, whether or not the metric is requested).
        check: ``check(config, sizes)`` for constraints that depend on the data sizes; run only
            when the metric is requested and its inputs are there.
        input_options: A function whose keyword-only arguments are further keys of the node:
            how the caller makes the metric's inputs (LiDAR: how many images and views it
            embeds). Never passed to ``fn``; the caller reads them with
            :func:`labelfree.metrics.suite.input_options`.
    """

    fn: Callable[..., float]
    needs: tuple[str, ...] = ("embeddings",)
    rules: Mapping[str, Rule] = field(default_factory=dict)
    check: Check | None = None
    input_options: Callable[..., Any] | None = None

    @property
    def name(self) -> str:
        """The metric's name: the function's name, its config node and its record-key suffix."""
        return self.fn.__name__


@dataclass(frozen=True)
class Provider:
    """An intermediate several metrics share, computed at most once per evaluation, on first use.

    Attributes:
        name: What a metric lists in ``needs`` to receive the value.
        compute: ``compute(evaluation)`` returns the value; it reads inputs and other providers
            as ``evaluation[name]`` and its options as ``evaluation.options(fn)``.
        needs: The inputs and providers ``compute`` reads, so that a metric needing this
            provider is skipped when one of them is missing.
        fn: The function whose keyword-only arguments are the config node of the same name
            (``kmeans`` -> ``metrics.kmeans``), or ``None`` if the provider has no options.
        rules: As for :class:`MetricSpec`, for the options of ``fn``'s node.
        check: As for :class:`MetricSpec`; run when a requested metric needs the provider.
        timing: Key of its seconds in compute_metrics' ``timings`` (``None``: not timed).
    """

    name: str
    compute: Callable[[Mapping[str, Any]], Any]
    needs: tuple[str, ...] = ("embeddings",)
    fn: Callable[..., Any] | None = None
    rules: Mapping[str, Rule] = field(default_factory=dict)
    check: Check | None = None
    timing: str | None = None


# --------------------------------------------------------------------------------------------
# providers
# --------------------------------------------------------------------------------------------


def resolve_k(config: dict[str, Any], sizes: DataSizes) -> int:
    """The number of k-means clusters: ``metrics.kmeans.k``, or the number of classes if null.

    Raises:
        ValueError: if k is null without labels, resolves below 2, or exceeds the sample count.
    """
    k = config.get("kmeans", {}).get("k")
    if k is None:
        if sizes.n_classes is None:
            raise ValueError(
                "metrics.kmeans.k=null means 'the number of classes', but no labels are "
                "available to count them: set metrics.kmeans.k to the number of clusters."
            )
        if sizes.n_classes < 2:
            raise ValueError(
                f"metrics.kmeans.k=null would use the number of classes ({sizes.n_classes}), "
                "but k-means metrics need k >= 2: set metrics.kmeans.k."
            )
        k = sizes.n_classes
    if k > sizes.n_samples:
        raise ValueError(
            f"metrics.kmeans.k={k} is larger than the number of evaluation samples "
            f"({sizes.n_samples}): lower metrics.kmeans.k or evaluate on more samples."
        )
    return int(k)


def _kmeans_partitions(evaluation: Mapping[str, Any]) -> Tensor:
    """C1..Cn: ``(n_runs, N)`` labels of the ``metrics.kmeans`` runs on the embeddings."""
    k = resolve_k(evaluation.config, evaluation.sizes)
    options = {**evaluation.options(kmeans), "k": k}
    return kmeans(evaluation["embeddings"], **options).labels


def _check_k(config: dict[str, Any], sizes: DataSizes) -> None:
    resolve_k(config, sizes)


def _first_partition(evaluation: Mapping[str, Any]) -> Tensor:
    """C1, the partition of the first k-means run (the paper's silhouette and AMI to labels)."""
    return evaluation["partitions"][0]


def _option(evaluation: Mapping[str, Any], fn: Callable[..., Any], name: str) -> Any:
    """Option ``name`` of ``fn`` as the metric will get it: its node's value, else the default."""
    options = evaluation.options(fn)
    if name in options:
        return options[name]
    return inspect.signature(fn).parameters[name].default


def _shared_spectrum(evaluation: Mapping[str, Any]) -> Spectrum:
    """One :func:`~labelfree.metrics.spectral.spectrum` for RankMe, alpha-ReQ and NESum.

    Computed once per evaluation, on the rows the requested spectral metrics use, and only the
    parts they read: the covariance eigenvalues on all rows when ``alpha_req`` or ``nesum`` is
    requested; the singular values when ``rankme`` is, on the same rows if ``N <=
    metrics.rankme.max_samples`` (RankMe then uses all rows too), otherwise, with RankMe alone,
    on RankMe's own seeded subsample. RankMe takes a spectrum only if it covers the rows it
    would use (:func:`~labelfree.metrics.spectral.rankme` checks): with ``alpha_req`` or
    ``nesum`` and ``N > max_samples`` it computes its own subsample, as it did unshared.
    """
    x = evaluation["embeddings"]
    compute = evaluation.config.get("compute") or ()
    covariance = "alpha_req" in compute or "nesum" in compute
    max_samples = _option(evaluation, rankme, "max_samples")
    all_rows = max_samples is None or x.shape[0] <= max_samples
    singular = "rankme" in compute and (all_rows or not covariance)
    # the private builder: a public spectrum() always computes both parts
    return _spectrum(
        x,
        max_samples=None if covariance else max_samples,
        seed=evaluation.seed,
        covariance=covariance,
        singular=singular,
    )


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "partitions",
            _kmeans_partitions,
            fn=kmeans,
            rules={
                "k": integer(2, optional=True),
                "n_runs": integer(1, fix=" (and kmeans_agreement needs n_runs >= 2)"),
                "max_iter": integer(1),
                "tol": number(),
                "n_local_trials": integer(1, optional=True),
            },
            check=_check_k,
            timing="kmeans",
        ),
        Provider("partition", _first_partition, needs=("partitions",)),
        Provider("spectrum", _shared_spectrum, timing="spectrum"),
    )
}


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def _check_silhouette(config: dict[str, Any], sizes: DataSizes) -> None:
    k = resolve_k(config, sizes)
    if k > sizes.n_samples - 1:
        raise ValueError(
            f"metrics.kmeans.k={k} leaves no room for the silhouette on {sizes.n_samples} "
            "samples (needs k <= N - 1): lower metrics.kmeans.k."
        )


def _check_agreement(config: dict[str, Any], sizes: DataSizes) -> None:
    n_runs = config.get("kmeans", {}).get("n_runs", 5)
    if n_runs < 2:
        raise ValueError(
            f"metrics.kmeans.n_runs={n_runs}: kmeans_agreement compares partitions from "
            "different initialisations and needs n_runs >= 2. Raise metrics.kmeans.n_runs "
            "or remove kmeans_agreement from metrics.compute."
        )


def _check_entropy(config: dict[str, Any], sizes: DataSizes) -> None:
    node = config.get("entropy", {})
    estimator = node.get("estimator", "histogram")
    if estimator == "knn" and node.get("k", 3) >= sizes.n_samples:
        fail_option("entropy.k", node.get("k", 3), f"must be smaller than N ({sizes.n_samples})")
    if estimator == "histogram" and node.get("projection") == "umap":
        import_umap()  # raises with the install command if umap-learn is missing


def _check_knn_acc(config: dict[str, Any], sizes: DataSizes) -> None:
    k = config.get("knn_acc", {}).get("k", 20)
    if k > sizes.n_train:
        raise ValueError(
            f"metrics.knn_acc.k={k} is larger than the number of labelled train "
            f"samples ({sizes.n_train}): lower metrics.knn_acc.k."
        )


_PROBE_NEEDS = ("train_embeddings", "train_labels", "embeddings", "labels")

#: Every metric. Results come in this order, label-free metrics first (see SPECS).
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        silhouette,
        needs=("embeddings", "partition"),
        rules={"sample_size": integer(2, optional=True)},
        check=_check_silhouette,
    ),
    MetricSpec(
        kmeans_agreement,
        needs=("partitions",),
        rules={"method": one_of(("ami", "ari"))},
        check=_check_agreement,
    ),
    MetricSpec(
        entropy,
        rules={
            "estimator": one_of(ESTIMATORS),
            "space": one_of(SPACES),
            "projection": one_of(PROJECTIONS),
            "pca_dim": integer(1),
            "k": integer(1),
            "bins": integer(1),
            "max_samples": integer(2, optional=True),
        },
        check=_check_entropy,
    ),
    MetricSpec(
        rankme,
        needs=("embeddings", "spectrum"),
        rules={"eps": number(), "max_samples": integer(1, optional=True)},
    ),
    MetricSpec(
        alpha_req,
        needs=("embeddings", "spectrum"),
        rules={
            "fit_start": integer(1),
            "fit_end": all_of(integer(2, optional=True), larger_than("fit_start", default=1)),
        },
    ),
    MetricSpec(nesum, needs=("embeddings", "spectrum")),
    MetricSpec(
        uniformity,
        rules={"t": number(positive=True), "max_samples": integer(2, optional=True)},
    ),
    MetricSpec(l2_std),
    MetricSpec(
        lidar,
        needs=("views",),
        rules={
            "delta": number(positive=True),
            "eps": number(),
            "n_images": integer(2),
            "n_views": integer(2),
        },
        input_options=lidar_views,
    ),
    MetricSpec(kmeans_gt_ami, needs=("partition", "labels")),
    MetricSpec(
        linear_probe_acc,
        needs=_PROBE_NEEDS,
        rules={"l2": number(), "max_iter": integer(1), "standardize": boolean},
    ),
    MetricSpec(
        knn_acc,
        needs=_PROBE_NEEDS,
        rules={"k": integer(1), "temperature": number(positive=True)},
        check=_check_knn_acc,
    ),
    MetricSpec(
        fewshot_probe_acc,
        needs=_PROBE_NEEDS,
        rules={
            "fraction": fraction,
            "n_draws": integer(1),
            "l2": number(),
            "max_iter": integer(1),
        },
    ),
)


# --------------------------------------------------------------------------------------------
# lookups derived from the tables
# --------------------------------------------------------------------------------------------


def providers_of(needs: Iterable[str]) -> tuple[str, ...]:
    """The providers behind ``needs``, those they read included, in :data:`PROVIDERS` order."""
    found: set[str] = set()
    pending = list(needs)
    while pending:
        name = pending.pop()
        if name in PROVIDERS and name not in found:
            found.add(name)
            pending.extend(PROVIDERS[name].needs)
    return tuple(name for name in PROVIDERS if name in found)


def inputs_of(needs: Iterable[str]) -> tuple[str, ...]:
    """The caller inputs behind ``needs`` (providers expanded), in :data:`INPUTS` order."""
    needs = tuple(needs)
    found = set(needs).union(*(PROVIDERS[p].needs for p in providers_of(needs)))
    return tuple(name for name in INPUTS if name in found)


def node_keys(spec: MetricSpec | Provider) -> tuple[str, ...]:
    """The keys of a config node: ``spec.fn``'s keyword-only arguments but ``seed`` and needs.

    A metric's ``input_options`` function adds its keyword-only arguments after them.
    """
    fns = [spec.fn, getattr(spec, "input_options", None)]
    skip = {"seed", *spec.needs}
    return tuple(
        p.name
        for fn in fns
        if fn is not None
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in skip
    )


def _label_based(spec: MetricSpec) -> bool:
    return any(name in _LABEL_INPUTS for name in inputs_of(spec.needs))


#: Metric name -> spec, label-free metrics first (the order of the results).
SPECS: dict[str, MetricSpec] = {s.name: s for s in sorted(METRICS, key=_label_based)}
LABEL_FREE_METRICS = tuple(name for name, s in SPECS.items() if not _label_based(s))
LABEL_METRICS = tuple(name for name, s in SPECS.items() if _label_based(s))
ALL_METRICS = LABEL_FREE_METRICS + LABEL_METRICS

#: Config node -> the provider or spec whose function's keyword arguments the node holds.
NODES: dict[str, MetricSpec | Provider] = {
    **{p.fn.__name__: p for p in PROVIDERS.values() if p.fn is not None},
    **SPECS,
}


def metric_key(name: str) -> str:
    """Record key of a metric name: ``lf/<name>`` or ``sup/<name>`` (DESIGN.md).

    Examples:
        >>> metric_key("silhouette"), metric_key("linear_probe_acc")
        ('lf/silhouette', 'sup/linear_probe_acc')
    """
    return record_key(name, label_based=name in LABEL_METRICS)
