"""Label-free and label-based metrics of embeddings: pure, seeded, CPU or CUDA.

The suite entry point is :func:`compute_metrics` (used by training and ``labelfree-eval``),
validated up front by :func:`check_metrics_config`; the metrics it runs, what each needs and the
rules of its options are one table, :mod:`labelfree.metrics.registry`. The individual metrics
are plain functions of arrays (numpy or torch tensors; a CUDA tensor is processed on its GPU):

* k-means (``kmeans``): :func:`kmeans`, returning a :class:`KMeansResult`
* silhouette (``silhouette``): :func:`silhouette`, :func:`silhouette_samples`
* partition agreement (``agreement``): :func:`adjusted_mutual_info`,
  :func:`adjusted_rand_index`, :func:`kmeans_agreement`, :func:`kmeans_gt_ami`
* entropy (bits): :func:`entropy`, :func:`histogram_entropy`, :func:`knn_entropy`,
  :func:`gaussian_entropy`
* spectral / geometric: :func:`rankme`, :func:`alpha_req`, :func:`nesum` (sharing one
  :func:`spectrum`, a :class:`Spectrum`), :func:`uniformity`, :func:`l2_std`
* augmented views: :func:`lidar` (its inputs: :func:`lidar_views`)
* probes: :func:`linear_probe_acc`, :func:`knn_acc`, :func:`fewshot_probe_acc`

Definitions, defaults and measured speed: docs/metrics.md.
"""

from labelfree.metrics.agreement import (
    adjusted_mutual_info,
    adjusted_rand_index,
    kmeans_agreement,
    kmeans_gt_ami,
)
from labelfree.metrics.entropy import (
    entropy,
    gaussian_entropy,
    histogram_entropy,
    knn_entropy,
    to_space,
)
from labelfree.metrics.kmeans import KMeansResult, kmeans
from labelfree.metrics.lidar import lidar, lidar_views
from labelfree.metrics.probe import fewshot_probe_acc, knn_acc, linear_probe_acc
from labelfree.metrics.registry import ALL_METRICS, LABEL_FREE_METRICS, LABEL_METRICS, metric_key
from labelfree.metrics.silhouette import silhouette, silhouette_samples
from labelfree.metrics.spectral import (
    Spectrum,
    alpha_req,
    covariance_eigenvalues,
    l2_std,
    nesum,
    rankme,
    spectrum,
    uniformity,
)
from labelfree.metrics.suite import check_metrics_config, compute_metrics, input_options

__all__ = [
    "ALL_METRICS",
    "LABEL_FREE_METRICS",
    "LABEL_METRICS",
    "KMeansResult",
    "Spectrum",
    "adjusted_mutual_info",
    "adjusted_rand_index",
    "alpha_req",
    "check_metrics_config",
    "compute_metrics",
    "covariance_eigenvalues",
    "entropy",
    "fewshot_probe_acc",
    "gaussian_entropy",
    "histogram_entropy",
    "input_options",
    "kmeans",
    "kmeans_agreement",
    "kmeans_gt_ami",
    "knn_acc",
    "knn_entropy",
    "l2_std",
    "lidar",
    "lidar_views",
    "linear_probe_acc",
    "metric_key",
    "nesum",
    "rankme",
    "silhouette",
    "silhouette_samples",
    "spectrum",
    "to_space",
    "uniformity",
]
