"""Input checks and small helpers shared by the metric modules.

Every public metric converts its inputs with these helpers, so bad input fails the same way
everywhere: a ``ValueError`` naming the argument, the bad value and the fix, never a traceback
from deep inside torch or scikit-learn. The config rules at the end check the values of the
``metrics`` config node the same way (``metrics.<node>.<option>=<value> must be ...``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor

# Number of float entries one distance block may hold. Blocks bound the memory of the
# O(N^2) metrics (silhouette, kNN, uniformity) to O(N * block_rows); bigger blocks only help a GPU.
_BLOCK_ENTRIES_CPU = 2**22
_BLOCK_ENTRIES_CUDA = 2**27


def block_rows(n_cols: int, device: torch.device) -> int:
    """Rows per distance block so that one ``(rows, n_cols)`` block stays within budget."""
    budget = _BLOCK_ENTRIES_CUDA if device.type == "cuda" else _BLOCK_ENTRIES_CPU
    return max(1, budget // max(1, n_cols))


def _as_tensor(x: Any, name: str, *, fix: str) -> Tensor:
    """A numeric numpy array (as a CPU tensor, copied if read-only) or a tensor, else an error."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be numeric; got dtype {x.dtype}.")
        arr = np.ascontiguousarray(x)
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if not isinstance(x, Tensor):
        raise ValueError(
            f"{name} must be a numpy array or a torch tensor; got {type(x).__name__}. {fix}"
        )
    return x


def as_embeddings(x: Tensor | np.ndarray, *, name: str = "embeddings") -> Tensor:
    """Return ``x`` as a finite 2-D floating tensor on its own device.

    numpy arrays become CPU tensors; torch tensors stay on their device (no copy to the CPU).
    Half-precision inputs are promoted to float32; float64 stays float64.

    Raises:
        ValueError: if ``x`` is not 2-D, is empty, or holds NaN or infinite values.
    """
    x = _as_tensor(x, name, fix="Convert it with np.asarray(...) first.")
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_samples, n_features); got shape "
            f"{tuple(x.shape)}. Reshape it, e.g. x.reshape(len(x), -1)."
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): pass at least one sample.")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    x = x.detach()
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        n_rows = int(bad.any(dim=1).sum())
        raise ValueError(
            f"{name} contain {n_bad} non-finite values (NaN or inf) in {n_rows} of "
            f"{x.shape[0]} rows: the encoder has probably diverged; check the training loss, "
            "or drop those rows before computing metrics."
        )
    return x


def as_views(views: Tensor | np.ndarray) -> Tensor:
    """``views`` as a finite 3-D float tensor ``(n, q, d)`` on its own device, checked."""
    views = _as_tensor(
        views, "views", fix="Stack the view embeddings first, e.g. torch.stack(views, dim=1)."
    )
    if views.ndim != 3:
        raise ValueError(
            "views must be a 3-D array of shape (n_images, n_views, n_features): n clean images "
            f"(surrogate classes), each with q augmented views; got shape {tuple(views.shape)}. "
            "Stack the q view embeddings of each image, e.g. torch.stack(views, dim=1)."
        )
    n, q, d = views.shape
    if n < 2:
        raise ValueError(
            f"lidar needs at least 2 images (surrogate classes) for the between-class "
            f"covariance; got n={n} (views.shape[0]). Embed views of more images."
        )
    if q < 2:
        raise ValueError(
            f"lidar needs at least 2 augmented views per image for the within-class covariance; "
            f"got q={q} (views.shape[1]). Embed more views of each image."
        )
    if d == 0:
        raise ValueError(f"views have no features (shape {tuple(views.shape)}).")
    views = views.detach()
    bad = ~torch.isfinite(views) if views.is_floating_point() else None
    if bad is not None and bool(bad.any()):
        n_bad = int(bad.sum())
        n_images = int(bad.flatten(1).any(1).sum())
        raise ValueError(
            f"views contain {n_bad} non-finite values (NaN or inf) in {n_images} of {n} images: "
            "the encoder has probably diverged; check the training loss, or drop those images."
        )
    return views


def as_labels(
    y: Tensor | np.ndarray, *, n: int, device: torch.device, name: str = "labels"
) -> Tensor:
    """Return ``y`` as a 1-D int64 tensor of length ``n`` on ``device``.

    Raises:
        ValueError: if ``y`` is not 1-D, has the wrong length, or is not integer-valued.
    """
    if isinstance(y, np.ndarray):
        if y.dtype.kind not in "iub":
            if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.int64)
            else:
                raise ValueError(
                    f"{name} must hold integer class ids; got dtype {y.dtype}. "
                    "Encode them first, e.g. np.unique(y, return_inverse=True)[1]."
                )
        y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    elif isinstance(y, Tensor):
        if y.is_floating_point() and not bool(torch.all(y == torch.round(y))):
            raise ValueError(
                f"{name} must hold integer class ids; got a {y.dtype} tensor with "
                "fractional values. Encode them first."
            )
        y = y.detach().long()
    else:
        raise ValueError(f"{name} must be a numpy array or a torch tensor; got {type(y).__name__}.")
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,); got shape {tuple(y.shape)}.")
    if y.shape[0] != n:
        raise ValueError(
            f"{name} has {y.shape[0]} entries but the embeddings have {n} rows: "
            "pass one label per embedding row."
        )
    return y.to(device)


def relabel(y: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary integer ids to ``0..k-1`` (sorted order); return ``(ids, k)``."""
    uniq, inv = torch.unique(y, return_inverse=True)
    return inv, int(uniq.numel())


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (never the global RNG)."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int; got {seed!r}.")
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def subsample(x: Tensor, max_samples: int | None, gen: torch.Generator) -> Tensor:
    """Seeded subset of at most ``max_samples`` rows (all rows, in order, if ``None`` or enough)."""
    if max_samples is None or x.shape[0] <= max_samples:
        return x
    idx = torch.randperm(x.shape[0], generator=gen, device=gen.device)[:max_samples]
    return x[idx.to(x.device)]


def nan_with_warning(message: str) -> float:
    """Warn with ``message`` (a ``RuntimeWarning``) and return NaN."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return math.nan


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return int(value)


def check_positive_float(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is > 0 (or >= 0), else raise ``ValueError``."""
    ok = isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > 0 or (allow_zero and value == 0))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be a finite number {bound}.")
    return float(value)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"Unknown {name}={value!r}. Choose one of: {', '.join(choices)}.")
    return str(value)


# --------------------------------------------------------------------------------------------
# config: the rules of option values
# --------------------------------------------------------------------------------------------


Rule = Callable[[str, Any, Mapping[str, Any]], None]
"""``rule(key, value, node)`` raises ``ValueError`` if ``metrics.<key>=value`` is invalid.

``key`` is ``<node>.<option>``; ``node`` holds the node's options, for rules across options.
"""


def fail_option(key: str, value: Any, rule: str) -> NoReturn:
    """Raise the one-line error of a bad config value: ``metrics.<key>=<value> <rule>.``."""
    raise ValueError(f"metrics.{key}={value!r} {rule}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (
        isinstance(v, int | float | np.integer | np.floating)
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    )


def integer(minimum: int, *, optional: bool = False, fix: str = "") -> Rule:
    """An integer ``>= minimum`` (or ``None`` if ``optional``); ``fix`` extends the error."""

    def rule(key: str, value: Any, node: Mapping[str, Any]) -> None:
        if value is None and optional:
            return
        if not _is_int(value) or value < minimum:
            null = " or null" if optional else ""
            fail_option(key, value, f"must be an integer >= {minimum}{null}{fix}")

    return rule


def number(*, positive: bool = False) -> Rule:
    """A finite number ``> 0`` if ``positive``, else ``>= 0``."""

    def rule(key: str, value: Any, node: Mapping[str, Any]) -> None:
        if not _is_num(value) or (float(value) <= 0 if positive else float(value) < 0):
            fail_option(key, value, f"must be a number {'> 0' if positive else '>= 0'}")

    return rule


def fraction(key: str, value: Any, node: Mapping[str, Any]) -> None:
    """A number in ``(0, 1]``."""
    number(positive=True)(key, value, node)
    if float(value) > 1:
        fail_option(key, value, "must be in (0, 1]")


def one_of(choices: tuple[str, ...]) -> Rule:
    """One of the strings ``choices``."""

    def rule(key: str, value: Any, node: Mapping[str, Any]) -> None:
        if value not in choices:
            fail_option(key, value, f"is not a valid option; choose one of: {', '.join(choices)}")

    return rule


def boolean(key: str, value: Any, node: Mapping[str, Any]) -> None:
    """``True`` or ``False``."""
    if not isinstance(value, bool):
        fail_option(key, value, "must be true or false")


def larger_than(other: str, *, default: Any) -> Rule:
    """Larger than the node's option ``other`` (``default`` when unset); ``None`` passes."""

    def rule(key: str, value: Any, node: Mapping[str, Any]) -> None:
        if value is not None and value <= node.get(other, default):
            fail_option(key, value, f"must be larger than metrics.{key.rpartition('.')[0]}.{other}")

    return rule


def all_of(*rules: Rule) -> Rule:
    """Each of ``rules``, in order (the first that fails raises)."""

    def rule(key: str, value: Any, node: Mapping[str, Any]) -> None:
        for each in rules:
            each(key, value, node)

    return rule
