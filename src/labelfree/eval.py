"""``labelfree-eval``: the metrics suite on saved embeddings or a training checkpoint.

Usage (Hydra overrides; config in ``conf/eval.yaml``)::

    labelfree-eval embeddings=Z.npy labels=y.npy output=metrics.json
    labelfree-eval embeddings=split.npz metrics=full
    labelfree-eval embeddings=Z.npy views=V.npy metrics=full metrics.kmeans.k=10
    labelfree-eval checkpoint=RUN_DIR/checkpoints/last.pt

An ``.npz`` file holds ``embeddings`` (N, D) and optionally ``labels`` (N,),
``train_embeddings`` (M, D), ``train_labels`` (M,) and ``views`` (n, q, D); separate
``labels=``, ``train_embeddings=``, ``train_labels=`` and ``views=`` ``.npy`` files override its
arrays. Without labels only the label-free (``lf/``) keys are computed; without views LiDAR is
skipped (from a checkpoint, the views are embedded when ``lidar`` is requested). The result is
printed as a table and written as JSON ``{record key: value}`` (DESIGN.md keys plus ``eval_s``;
NaN is written as ``null``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from labelfree.build import build_evaluator, build_model, resolve_device
from labelfree.checkpoint import load_checkpoint, restore
from labelfree.config import quote_path_overrides
from labelfree.metrics import compute_metrics
from labelfree.rundir import write_atomic

log = logging.getLogger(__name__)

NPZ_ARRAYS = ("embeddings", "labels", "train_embeddings", "train_labels", "views")


def _load_npy(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p.resolve()}")
    if p.suffix != ".npy":
        raise ValueError(f"{what}={path!r} must be a .npy file.")
    return _np_load(p, what)


def _np_load(path: Path, what: str):
    """``np.load`` without pickles; an object array gets a message saying how to save it."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise ValueError(
            f"{what}={path} holds Python objects (an object array), which are not loaded (a "
            f"pickle can run code): save numbers or strings, e.g. np.save(path, np.asarray(y, "
            f"dtype=str)) for string labels."
        ) from None


def map_string_labels(arrays: dict[str, np.ndarray | None]) -> dict[str, int] | None:
    """Replace string labels (``labels``, ``train_labels``) by class ids, in place.

    Both arrays share one mapping: the sorted distinct strings of either get ids 0, 1, ...
    Returns the mapping (None when the labels are already numbers).

    Examples:
        >>> arrays = {"labels": np.array(["cat", "dog", "cat"]), "train_labels": None}
        >>> map_string_labels(arrays), arrays["labels"].tolist()
        ({'cat': 0, 'dog': 1}, [0, 1, 0])
    """
    present = {k: arrays.get(k) for k in ("labels", "train_labels") if arrays.get(k) is not None}
    if not any(a.dtype.kind in "US" for a in present.values()):
        return None
    if not all(a.dtype.kind in "US" for a in present.values()):
        raise ValueError(
            "labels and train_labels must both be strings or both be integers: got "
            + ", ".join(f"{k} of dtype {a.dtype}" for k, a in present.items())
            + "."
        )
    classes = np.unique(np.concatenate([a.astype(str) for a in present.values()]))
    for key, array in present.items():
        arrays[key] = np.searchsorted(classes, array.astype(str)).astype(np.int64)
    return {str(c): i for i, c in enumerate(classes)}


def load_arrays(
    embeddings: str,
    *,
    labels: str | None = None,
    train_embeddings: str | None = None,
    train_labels: str | None = None,
    views: str | None = None,
) -> dict[str, np.ndarray | None]:
    """Read the evaluation arrays from ``.npy`` / ``.npz`` files.

    Args:
        embeddings: ``.npy`` file with an ``(N, D)`` array, or ``.npz`` with arrays named
            ``embeddings`` (required), ``labels``, ``train_embeddings``, ``train_labels``,
            ``views``.
        labels: Optional ``.npy`` with ``(N,)`` labels (overrides the ``.npz`` array).
        train_embeddings: Optional ``.npy`` with ``(M, D)`` train embeddings.
        train_labels: Optional ``.npy`` with ``(M,)`` train labels.
        views: Optional ``.npy`` with ``(n, q, D)`` embeddings of ``q`` augmented views of each
            of ``n`` images, for LiDAR.

    Returns:
        ``{"embeddings", "labels", "train_embeddings", "train_labels", "views"}`` (missing ones
        ``None``).

    Raises:
        FileNotFoundError: if a file does not exist.
        ValueError: for an unsupported suffix, an ``.npz`` without ``embeddings``, or views
            that are not 3-D.
    """
    p = Path(embeddings)
    if not p.is_file():
        raise FileNotFoundError(f"embeddings file not found: {p.resolve()}")
    arrays: dict[str, np.ndarray | None] = dict.fromkeys(NPZ_ARRAYS)
    if p.suffix == ".npz":
        with _np_load(p, "embeddings") as npz:
            if "embeddings" not in npz.files:
                raise ValueError(
                    f"{p} holds arrays {sorted(npz.files)} but no 'embeddings': save it with "
                    "np.savez(path, embeddings=Z, labels=y, train_embeddings=..., "
                    "train_labels=...)."
                )
            for name in NPZ_ARRAYS:
                if name in npz.files:
                    try:
                        arrays[name] = npz[name]
                    except ValueError as err:  # an object array inside the archive
                        raise ValueError(
                            f"{p} array {name!r} holds Python objects, which are not loaded "
                            f"(a pickle can run code): save numbers or strings ({err})."
                        ) from None
    elif p.suffix == ".npy":
        arrays["embeddings"] = _np_load(p, "embeddings")
    else:
        raise ValueError(f"embeddings={embeddings!r} must be a .npy or .npz file.")
    for name, path in (
        ("labels", labels),
        ("train_embeddings", train_embeddings),
        ("train_labels", train_labels),
        ("views", views),
    ):
        if path is not None:
            if arrays[name] is not None:
                log.info("%s from %s replaces the array in %s", name, path, p)
            arrays[name] = _load_npy(path, name)
    _check_views(arrays["views"], views or f"{p}[views]")
    mapping = map_string_labels(arrays)
    if mapping is not None:
        shown = ", ".join(f"{c}={i}" for c, i in list(mapping.items())[:12])
        log.info(
            "String labels mapped to class ids (sorted): %s%s",
            shown,
            " ..." if len(mapping) > 12 else "",
        )
    return arrays


def _check_views(views: np.ndarray | None, source: str) -> None:
    """A clear error for views that are not one ``(n_images, n_views, n_features)`` array."""
    if views is None or (views.ndim == 3 and views.shape[0] >= 2 and views.shape[1] >= 2):
        return
    raise ValueError(
        f"views={source} has shape {views.shape}: expected (n_images, n_views, n_features) with "
        f"n_images >= 2 and n_views >= 2, the embeddings of n_views augmented views of each "
        f"image, e.g. np.save(path, np.stack([embed(augment(x)) for _ in range(q)], axis=1))."
    )


def format_table(results: dict[str, float]) -> str:
    """The results as an aligned two-column text table.

    Examples:
        >>> print(format_table({"lf/silhouette": 0.25, "sup/knn_acc": float("nan")}))
        metric         value
        -------------  ------
        lf/silhouette  0.2500
        sup/knn_acc    nan
    """
    width = max([len("metric"), *map(len, results)])
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for key, value in results.items():
        text = "nan" if math.isnan(value) else f"{value:.4f}"
        rows.append(f"{key:<{width}}  {text}")
    return "\n".join(rows)


def embed_checkpoint(
    path: str | Path, device: str | torch.device | None = None, *, metrics: Any = None
) -> dict:
    """Rebuild a run from its checkpoint and embed its evaluation splits as training did.

    The model, the evaluation split, the probe's train split and the forward precision are the
    run's own (:func:`labelfree.build.build_evaluator`, the builder training uses), so a run
    evaluated in bf16 is embedded in bf16 here too.

    Args:
        path: The checkpoint.
        device: Where to embed (``None``: CUDA when available).
        metrics: A ``metrics`` node replacing the run's own (``None``: the run's); LiDAR's
            views are embedded when it requests ``lidar``.

    Returns:
        dict with ``embeddings``/``labels`` (test split), ``train_embeddings``/``train_labels``,
        ``views`` (LiDAR's, or ``None``), ``metrics_config`` (the metrics node used), ``seed``,
        ``epoch`` and ``precision``.
    """
    device = resolve_device(device, key="device")
    state = load_checkpoint(path, map_location="cpu")
    cfg = OmegaConf.create(state["config"])
    if metrics is not None:
        cfg.metrics = OmegaConf.create(OmegaConf.to_container(metrics, resolve=True))
    dataset, model = build_model(cfg)
    restore(state, path, model)
    model.to(device)
    evaluator = build_evaluator(cfg, dataset, device=device)
    z = evaluator.embeddings(model)
    return {
        "embeddings": z["test"],
        "labels": evaluator.splits["test"].labels,
        "train_embeddings": z["train"],
        "train_labels": evaluator.splits["train"].labels,
        "views": z.get("views"),
        "metrics_config": cfg.metrics,
        "seed": int(cfg.seed) + int(state["epoch"]),
        "epoch": int(state["epoch"]),
        "precision": evaluator.precision,
    }


def _overridden(prefix: str) -> bool:
    """Whether the command line overrides ``prefix`` (e.g. ``metrics=full``, ``metrics.x=1``)."""
    try:
        task = HydraConfig.get().overrides.task
    except ValueError:  # not running under Hydra
        return False
    for override in task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == prefix or key.startswith((f"{prefix}.", f"{prefix}@")):
            return True
    return False


def _from_checkpoint(cfg: DictConfig, device: torch.device) -> tuple[dict[str, Any], Any, int]:
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path.resolve()}")
    if cfg.views is not None:
        raise ValueError(
            f"views={cfg.views} goes with embeddings=, not checkpoint=: from a checkpoint the "
            "views are embedded from the run's own augmentation; drop views=."
        )
    overridden = _overridden("metrics")
    data = embed_checkpoint(str(path), device=device, metrics=cfg.metrics if overridden else None)
    metrics_cfg = data.get("metrics_config")
    if metrics_cfg is None or overridden:
        metrics_cfg = cfg.metrics
        log.info("metrics config: from the command line (%s)", cfg.metrics.name)
    else:
        log.info("metrics config: the run's own (override metrics=... to change it)")
    seed = int(cfg.seed) if _overridden("seed") or "seed" not in data else int(data["seed"])
    arrays = {name: data.get(name) for name in NPZ_ARRAYS}
    return arrays, metrics_cfg, seed


def _to_device(a: Any, device: torch.device) -> Any:
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    return a.to(device) if isinstance(a, torch.Tensor) else a


def run_eval(cfg: DictConfig) -> dict[str, float]:
    """Compute the suite as configured by ``conf/eval.yaml``; write the JSON; return results.

    Raises:
        ValueError: for an invalid combination of options or metrics config.
        FileNotFoundError: for missing input files.
    """
    if (cfg.embeddings is None) == (cfg.checkpoint is None):
        raise ValueError(
            "Pass exactly one of embeddings=Z.npy (or .npz) and "
            "checkpoint=RUN_DIR/checkpoints/last.pt "
            f"(got embeddings={cfg.embeddings!r}, checkpoint={cfg.checkpoint!r})."
        )
    device = resolve_device(cfg.device, key="device")
    if cfg.checkpoint is not None:
        arrays, metrics_cfg, seed = _from_checkpoint(cfg, device)
        source = str(cfg.checkpoint)
    else:
        arrays = load_arrays(
            cfg.embeddings,
            labels=cfg.labels,
            train_embeddings=cfg.train_embeddings,
            train_labels=cfg.train_labels,
            views=cfg.views,
        )
        metrics_cfg, seed, source = cfg.metrics, int(cfg.seed), str(cfg.embeddings)
    z = arrays["embeddings"]
    log.info(
        "evaluating %s: %s embeddings on %s, labels: %s, train split: %s, views: %s",
        source,
        "x".join(map(str, z.shape)),
        device,
        "yes" if arrays["labels"] is not None else "no",
        "no" if arrays["train_embeddings"] is None else len(arrays["train_embeddings"]),
        "no" if arrays["views"] is None else "x".join(map(str, arrays["views"].shape)),
    )
    start = time.perf_counter()
    results = compute_metrics(
        _to_device(z, device),
        config=metrics_cfg,
        labels=_to_device(arrays["labels"], device),
        train_embeddings=_to_device(arrays["train_embeddings"], device),
        train_labels=_to_device(arrays["train_labels"], device),
        views=_to_device(arrays["views"], device),
        seed=seed,
    )
    results["eval_s"] = time.perf_counter() - start
    out = Path(cfg.output)
    payload = {k: (None if math.isnan(v) else v) for k, v in results.items()}
    write_atomic(out, json.dumps(payload, indent=2) + "\n")
    name = OmegaConf.select(metrics_cfg, "name") if isinstance(metrics_cfg, DictConfig) else None
    print(f"labelfree-eval: {source} (metrics={name or metrics_cfg.get('name')}, seed={seed})")
    print(format_table(results))
    log.info("wrote %s", out.resolve())
    return results


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    try:
        run_eval(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"labelfree-eval: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def main() -> None:
    """Console-script entry point (``labelfree-eval``): run-directory paths need no quoting."""
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
