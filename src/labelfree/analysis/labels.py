"""Display labels of the analysis: metric symbols, coefficient names, variant text, file slugs.

The label of each record key comes from the record schema (:data:`labelfree.records.METRIC_LABELS`,
the paper's symbols where it has one); keys without one are shown as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from labelfree.analysis.correlate import CROSS_RUN_VARIANT
from labelfree.records import LABEL_FREE_PREFIX, METRIC_LABELS

#: Column order of the paper's tables; other metrics follow alphabetically.
PAPER_ORDER = ("lf/silhouette", "lf/kmeans_agreement", "lf/entropy")
COEFFICIENT_NAMES = {"spearman": "Spearman", "pearson": "Pearson", "kendall": "Kendall"}
COEFFICIENT_SYMBOLS = {"spearman": "ρ_s", "pearson": "r", "kendall": "τ"}
VARIANT_TEXT = {
    "all": "all evaluations, epoch 0 (random initialisation) included",
    "no_init": "epoch 0 (random initialisation) excluded",
    "late": "evaluations at or after {late_fraction:g} of the planned epochs",
    CROSS_RUN_VARIANT: "final evaluation of each completed run, across runs",
}


def metric_label(key: str, *, latex: bool = False) -> str:
    """Display label of a metric key (the paper's symbol where known, else the key).

    Examples:
        >>> metric_label("lf/kmeans_agreement")
        'AMI(C1;C2)'
        >>> metric_label("lf/new_metric")
        'lf/new_metric'
    """
    plain, tex = METRIC_LABELS.get(key, (key, None))
    if not latex:
        return plain
    return tex if tex is not None else latex_escape(key)


def order_metrics(metrics: Sequence[str]) -> list[str]:
    """Paper order first (S1, AMI(C1;C2), H(Z)), then other ``lf/*``, then the rest."""

    def rank(key: str) -> tuple:
        if key in PAPER_ORDER:
            return (0, PAPER_ORDER.index(key), key)
        return (1 if key.startswith(LABEL_FREE_PREFIX) else 2, 0, key)

    return sorted(dict.fromkeys(metrics), key=rank)


def latex_escape(text: str) -> str:
    r"""Escape LaTeX special characters in plain text.

    Examples:
        >>> latex_escape("small_cnn & 50%")
        'small\\_cnn \\& 50\\%'
    """
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "±": r"$\pm$",
        "–": "--",
        "≥": r"$\geq$",
    }
    return re.sub(r"[\\&%$#_{}~^±–≥]", lambda m: replacements[m.group()], text)


def slug(*parts: object) -> str:
    """File-name form of labels, parts joined by ``_``.

    Examples:
        >>> slug("digits", "small_cnn", "lf/entropy")
        'digits_small-cnn_lf-entropy'
    """
    return "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", str(p)).strip("-") for p in parts)
