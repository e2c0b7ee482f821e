"""The record schema (DESIGN.md): what one evaluation writes and what ``run.json`` may say.

A record is one flat JSON object per evaluation in ``metrics.jsonl``: the position and timing keys
(:data:`POSITION_KEYS`), ``train/loss``, then one key per metric under a prefix that says what
it needed: ``lf/`` (label-free), ``sup/`` (label-based reference). Extensions add keys under the
same prefixes. Every module that writes, logs, reads or labels records takes the names from here.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Where a record sits in training and what it cost (seconds).
POSITION_KEYS = ("epoch", "step", "wall_s", "eval_s")
#: Prefixes of the value keys: training scalars, label-free metrics, label-based references.
TRAIN_PREFIX, LABEL_FREE_PREFIX, LABEL_PREFIX = "train/", "lf/", "sup/"
VALUE_PREFIXES = (TRAIN_PREFIX, LABEL_FREE_PREFIX, LABEL_PREFIX)
#: The mean SSL loss of the epoch that ended at the record's epoch (None at epoch 0).
LOSS_KEY = "train/loss"
#: Keys whose values depend on the machine's speed, not on the run (left out of comparisons).
TIMING_KEYS = ("wall_s", "eval_s")

#: ``run.json`` statuses: ``interrupted`` is a run stopped by Ctrl-C or a requeue signal.
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
#: Statuses of a run that has not finished and may still be resumed.
UNFINISHED = ("running", "interrupted")

#: Display labels of the record keys: (plain text, LaTeX); the paper's symbols where it has one.
METRIC_LABELS = {
    "lf/silhouette": ("S1", r"$S_1$"),
    "lf/kmeans_agreement": ("AMI(C1;C2)", r"$\mathrm{AMI}(C_1;C_2)$"),
    "lf/entropy": ("H(Z)", r"$H(Z)$"),
    "lf/rankme": ("RankMe", "RankMe"),
    "lf/alpha_req": ("alpha-ReQ", r"$\alpha$-ReQ"),
    "lf/nesum": ("NESum", "NESum"),
    "lf/uniformity": ("Uniformity", "Uniformity"),
    "lf/l2_std": ("l2-std", r"$\ell_2$-std"),
    "lf/lidar": ("LiDAR", "LiDAR"),
    "sup/kmeans_gt_ami": ("AMI(C1;C_GT)", r"$\mathrm{AMI}(C_1;C_{GT})$"),
    "sup/linear_probe_acc": ("linear probe acc.", "linear probe acc."),
    "sup/knn_acc": ("kNN acc.", "kNN acc."),
    "sup/fewshot_probe_acc": ("few-shot probe acc.", "few-shot probe acc."),
}


def metric_key(name: str, *, label_based: bool) -> str:
    """Record key of a metric: ``sup/<name>`` when it needs labels, else ``lf/<name>``.

    Examples:
        >>> metric_key("silhouette", label_based=False), metric_key("knn_acc", label_based=True)
        ('lf/silhouette', 'sup/knn_acc')
    """
    return (LABEL_PREFIX if label_based else LABEL_FREE_PREFIX) + name


def make_record(
    *, epoch: int, step: int, wall_s: float, eval_s: float, loss: float | None, metrics: Mapping
) -> dict:
    """One evaluation record: position, timing (rounded to ms), the loss, then the metrics.

    Examples:
        >>> make_record(epoch=1, step=10, wall_s=2.5, eval_s=0.25, loss=3.0,
        ...             metrics={"lf/silhouette": 0.3})
        {'epoch': 1, 'step': 10, 'wall_s': 2.75, 'eval_s': 0.25, 'train/loss': 3.0, 'lf/silhouette': 0.3}
    """  # noqa: E501
    return {
        "epoch": epoch,
        "step": step,
        "wall_s": round(wall_s + eval_s, 3),
        "eval_s": round(eval_s, 3),
        LOSS_KEY: loss,
        **metrics,
    }


def order_keys(keys) -> list[str]:
    """Position keys first, then ``train/``, ``lf/``, ``sup/`` and other keys, each sorted.

    Examples:
        >>> order_keys(["sup/knn_acc", "lf/entropy", "epoch", "note", "train/loss"])
        ['epoch', 'train/loss', 'lf/entropy', 'sup/knn_acc', 'note']
    """
    keys = list(dict.fromkeys(keys))

    def rank(key: str) -> tuple:
        if key in POSITION_KEYS:
            return (0, POSITION_KEYS.index(key), key)
        for i, prefix in enumerate(VALUE_PREFIXES, start=1):
            if key.startswith(prefix):
                return (i, 0, key)
        return (len(VALUE_PREFIXES) + 1, 0, key)

    return sorted(keys, key=rank)


def without_timing(record: Mapping) -> dict:
    """A record without :data:`TIMING_KEYS`: what two runs of the same config must share."""
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}
