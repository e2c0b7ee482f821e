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
    assert list(timings) == ["rankme"]


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
