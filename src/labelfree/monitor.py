"""Label-free monitoring for any SSL training loop: the evaluation of ``labelfree-train``, added.

:class:`LabelFreeMonitor` embeds a fixed held-out set (no labels needed) at scheduled epochs and
computes the same metrics suite as ``labelfree-train`` (:func:`labelfree.metrics.compute_metrics`,
the ``metrics`` configs of ``conf/metrics/``), writes the records in the run-directory format
(``metrics.jsonl``, ``run.json``) that ``labelfree-analyze`` reads, and passes each record to a
logger. Between scheduled epochs it costs a set lookup. A plain PyTorch loop::

    monitor = LabelFreeMonitor(heldout, epochs=100, k=10, run_dir="runs/simclr-s0")
    monitor.maybe_evaluate(model, epoch=0)  # the random initialisation
    for epoch in range(1, 101):
        train_one_epoch(model, loader)
        monitor.maybe_evaluate(model, epoch=epoch)

The label-free sensor plus a few labels to confirm it (Xu et al. 2024): ``labels=`` of the
held-out images add the label-based references (``sup/kmeans_gt_ami``), and ``few_labels=(x,
y)``, a small labelled set, the probes trained on it (``sup/linear_probe_acc``, and
``sup/knn_acc`` / ``sup/fewshot_probe_acc`` when the metrics config lists them).
PyTorch Lightning: :class:`labelfree.integrations.lightning.LabelFreeCallback`. How-to and the
measured cost: docs/monitor.md.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from labelfree.evaluation import embed, embed_views, eval_epochs, lidar_images, summary_line
from labelfree.metrics import check_metrics_config, compute_metrics, registry
from labelfree.records import STATUSES, make_record
from labelfree.rundir import RunDir
from labelfree.views import build_views

log = logging.getLogger(__name__)

__all__ = ["METRICS_CONFIGS", "LabelFreeMonitor", "metrics_config"]

_CONF = Path(__file__).parent / "conf" / "metrics"
#: The shipped metrics configs (``conf/metrics/<name>.yaml``).
METRICS_CONFIGS = tuple(sorted(p.stem for p in _CONF.glob("*.yaml")))


def metrics_config(name: str) -> dict[str, Any]:
    """A shipped ``metrics`` config as a plain dict, as Hydra composes it for ``metrics=<name>``.

    Read with OmegaConf (its ``defaults`` list of other configs of the group merged first), not
    through Hydra's global state, so it works inside an application that runs Hydra itself.

    Raises:
        ValueError: for a name that is not in :data:`METRICS_CONFIGS`.

    Examples:
        >>> metrics_config("paper")["compute"]
        ['silhouette', 'kmeans_agreement', 'entropy', 'kmeans_gt_ami', 'linear_probe_acc']
        >>> metrics_config("full")["kmeans"] == metrics_config("paper")["kmeans"]
        True
    """
    if name not in METRICS_CONFIGS:
        raise ValueError(
            f"Unknown metrics config {name!r}. Choose one of: {', '.join(METRICS_CONFIGS)}, or "
            "pass a metrics mapping like conf/metrics/full.yaml."
        )
    node = OmegaConf.load(_CONF / f"{name}.yaml")
    defaults = list(node.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:  # Hydra's order: later entries override earlier ones
        merged = OmegaConf.merge(merged, node if entry == "_self_" else metrics_config(entry))
    return OmegaConf.to_container(merged, resolve=True)


def _as_inputs(images: Any, what: str) -> Tensor:
    """A tensor of ``N`` model inputs from a tensor, an array or a dataset of items."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.utils.data.Dataset) and hasattr(images, "__len__"):
        items = [images[i] for i in range(len(images))]  # a map-style dataset
        items = [item[0] if isinstance(item, tuple | list) else item for item in items]
        if items and not isinstance(items[0], Tensor | np.ndarray):
            from torchvision.transforms.functional import pil_to_tensor  # PIL images

            items = [pil_to_tensor(item) for item in items]
        images = torch.stack([torch.as_tensor(item) for item in items]) if items else None
    if not isinstance(images, Tensor):
        raise ValueError(
            f"{what} must be a tensor (N, C, H, W), a numpy array or a map-style dataset of "
            f"images; got {type(images).__name__}."
        )
    if images.ndim < 2 or len(images) < 2:
        raise ValueError(
            f"{what} must hold at least 2 inputs along the first axis; got shape "
            f"{tuple(images.shape)}."
        )
    if images.dtype == torch.uint8 and images.ndim != 4:
        raise ValueError(
            f"{what} of dtype uint8 must be images (N, C, H, W); got shape {tuple(images.shape)}."
        )
    return images.detach()


def _as_labels(labels: Any, n: int, what: str) -> Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{what} must hold one label per image ({n}); got shape {tuple(y.shape)}.")
    return y


def _seeded_augment(augment: Any, seed: int) -> Callable[..., Tensor] | None:
    """LiDAR's augmentation as ``augment(batch, generator=g)``, whatever form it was given in."""
    if augment is None:
        return None
    if isinstance(augment, Mapping):  # lightly's option names, as data.augment
        (view,) = build_views(augment, [{}])
        return view
    if not callable(augment):
        raise ValueError(
            f"augment must be a callable (batch -> one view of each image), a "
            f"labelfree.views.ViewAugmentation or a mapping of its options; got "
            f"{type(augment).__name__}."
        )
    # an nn.Module's signature is its __call__'s (*args, **kwargs): look at its forward
    target = augment.forward if isinstance(augment, torch.nn.Module) else augment
    try:
        takes_generator = "generator" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin or C callable
        takes_generator = False
    if takes_generator:
        return augment

    def seeded(batch: Tensor, generator: torch.Generator) -> Tensor:
        # A transform drawing from torch's global RNG: seeded from our generator inside a fork,
        # so the views repeat at every evaluation and the caller's RNG state is left as it was.
        devices = [batch.device] if batch.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            return augment(batch)

    return seeded


class LabelFreeMonitor:
    """Label-free metrics of a fixed held-out set at scheduled epochs, for any training loop.

    The suite of ``labelfree-train`` (same configs, same functions, same record format): at
    each scheduled epoch the model embeds the held-out images in eval mode without gradients
    (its train/eval mode is restored), :func:`labelfree.metrics.compute_metrics` computes the
    configured metrics, and the record goes to ``run_dir`` and ``logger``. Label-based
    metrics run only with ``labels``; the probes only with ``few_labels`` too; LiDAR only with
    ``augment`` (on ``metrics.lidar.n_images`` held-out images drawn once with ``seed``, each
    with ``n_views`` views drawn from ``seed``: the same views at every evaluation).

    Args:
        images: The held-out inputs: ``(N, C, H, W)`` uint8 images (scaled to [0, 1], then
            ``normalize``), float tensors (taken as they are, then ``normalize``), a numpy
            array, or a map-style dataset of images or ``(image, ...)`` tuples (stacked once).
        epochs: Planned epochs (needed by ``log:N`` schedules; the last one is always evaluated
            and marks the run ``completed``).
        schedule: ``"log:N"`` (about N log-spaced epochs, dense early), ``"every:N"`` or a list
            of epochs, as ``eval.schedule``; epoch 0 and ``epochs`` always.
        metrics: A shipped metrics config (``"paper"``, ``"full"``, see
            :data:`METRICS_CONFIGS`) or a ``metrics`` mapping (``name``, ``compute``, nodes).
        k: k-means clusters (``metrics.kmeans.k``); ``None`` keeps the config's, whose null
            means the number of distinct ``labels`` (so without labels, pass ``k``).
        labels: ``(N,)`` integer labels of the held-out images, optional.
        few_labels: ``(images, labels)``, a small labelled set embedded at each evaluation as
            the probes' train split (``linear_probe_acc``, ``knn_acc``,
            ``fewshot_probe_acc``); needs ``labels``. Optional.
        augment: LiDAR's view augmentation: a callable making one view of each image of a
            batch, model-ready (a :class:`~labelfree.views.ViewAugmentation`, or any
            ``augment(batch)``, seeded here), or a mapping of
            :class:`~labelfree.views.ViewOptions` (lightly's names). Optional.
        normalize: ``{"mean": [...], "std": [...]}`` per channel, applied to the held-out and
            few-label images before the model (not to ``augment``'s views). Optional.
        embed: ``embed(model, x) -> features`` when neither ``model.embed`` / ``model.features``
            nor ``model(x)`` gives the embedding you want (e.g. ``lambda m, x: m.backbone(x)``
            when ``forward`` returns the projector's output). Optional.
        run_dir: Where ``metrics.jsonl`` and ``run.json`` go (``None``: nowhere). Records already
            there are kept and their epochs not evaluated again (a resumed run).
        logger: Receives each record: an object with ``log_record(record)`` (the loggers of
            :mod:`labelfree.loggers`) or a callable ``logger(record)``. Optional.
        method: ``run.json``'s method (``labelfree-analyze`` groups runs by data, arch, method).
        arch: ``run.json``'s arch.
        data: ``run.json``'s data.
        name: ``run.json``'s name (default: the run directory's name).
        config: The training config, stored in ``run.json`` next to the monitor's settings.
        seed: Seed of the metrics (``seed + epoch``, as in training) and of LiDAR's draws.
        batch_size: Inputs per forward pass.
        device: Where the held-out images go (``None``: the model's device at each call).

    Raises:
        ValueError: for bad inputs or options, naming the value and the fix.
    """

    def __init__(
        self,
        images: Tensor | np.ndarray | torch.utils.data.Dataset,
        *,
        epochs: int | None = None,
        schedule: str | Sequence[int] = "log:10",
        metrics: str | Mapping[str, Any] = "paper",
        k: int | None = None,
        labels: Tensor | np.ndarray | None = None,
        few_labels: tuple[Any, Any] | None = None,
        augment: Callable[..., Tensor] | Mapping[str, Any] | None = None,
        normalize: Mapping[str, Sequence[float]] | None = None,
        embed: Callable[[torch.nn.Module, Tensor], Tensor] | None = None,
        run_dir: str | Path | None = None,
        logger: Any = None,
        method: str = "custom",
        arch: str = "custom",
        data: str = "custom",
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ):
        self.images = _as_inputs(images, "images")
        n = len(self.images)
        self.labels = _as_labels(labels, n, "labels") if labels is not None else None
        self.few_images = self.few_labels = None
        if few_labels is not None:
            if self.labels is None:
                raise ValueError(
                    "few_labels=(images, labels) trains the probes, which are scored on the "
                    "held-out images: pass their labels= too."
                )
            self.few_images = _as_inputs(few_labels[0], "few_labels[0]")
            self.few_labels = _as_labels(few_labels[1], len(self.few_images), "few_labels[1]")
        self.metrics = metrics_config(metrics) if isinstance(metrics, str) else dict(metrics)
        self.metrics = OmegaConf.to_container(OmegaConf.create(self.metrics), resolve=True)
        if k is not None:
            self.metrics["kmeans"] = {**(self.metrics.get("kmeans") or {}), "k": k}
        self._check_metrics()
        self.epochs, self.schedule = epochs, schedule
        self._planned = self._plan(schedule, epochs)
        self.seed, self.batch_size = seed, batch_size
        self.normalize, self.embed_fn = normalize, embed
        self.device = torch.device(device) if device is not None else None
        self.augment, self.view_images, self.n_views = _seeded_augment(augment, seed), None, 0
        plan = lidar_images(n, self.metrics, seed=seed)
        if plan is not None and self.augment is not None:
            self.view_images, self.n_views = self.images[plan[0]], plan[1]
        self.logger = logger
        self.records: list[dict] = []
        self._on_device: dict[tuple[int, torch.device], Tensor] = {}
        self._done: set[int] = set()
        self._started = time.perf_counter()
        self.run = RunDir(run_dir) if run_dir is not None else None
        if self.run is not None:
            self._open_run(method, arch, data, name, config)

    # ----------------------------------------------------------------------------------------
    # set-up

    def _check_metrics(self) -> None:
        names = self.metrics.get("compute") or []
        kmeans_k = (self.metrics.get("kmeans") or {}).get("k")
        needs_k = [
            n
            for n in names
            if n in registry.SPECS
            and "partitions" in registry.providers_of(registry.SPECS[n].needs)
            and "labels" not in registry.inputs_of(registry.SPECS[n].needs)
        ]
        if kmeans_k is None and self.labels is None and needs_k:
            raise ValueError(
                f"{', '.join(needs_k)} cluster the embeddings with k-means, whose k defaults to "
                "the number of classes, but no labels= were given: pass k=<number of clusters>."
            )
        check_metrics_config(
            self.metrics,
            n_samples=len(self.images),
            n_classes=int(torch.unique(self.labels).numel()) if self.labels is not None else None,
            n_train=len(self.few_images) if self.few_images is not None else None,
        )

    @staticmethod
    def _plan(schedule: str | Sequence[int], epochs: int | None) -> set[int] | None:
        """The scheduled epochs, or ``None`` for an open-ended ``every:N`` (no ``epochs``)."""
        try:
            if epochs is not None:
                if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
                    raise ValueError(f"epochs={epochs!r} must be an integer >= 0.")
                return set(eval_epochs(schedule, epochs))
            if isinstance(schedule, str) and schedule.startswith("every:"):
                eval_epochs(schedule, 1)  # validates N
                return None
            if isinstance(schedule, str):
                raise ValueError(
                    f"schedule={schedule!r} needs the planned number of epochs: pass epochs=."
                )
            last = max([0, *(e for e in schedule if isinstance(e, int))])
            return set(eval_epochs(schedule, last))
        except ValueError as err:  # the schedule's messages name the training config's keys
            text = str(err).replace("eval.schedule", "schedule").replace("trainer.epochs", "epochs")
            raise ValueError(text) from None

    def _open_run(self, method: str, arch: str, data: str, name: str | None, config: Any) -> None:
        done = {int(r["epoch"]) for r in self.run.read_records() if "epoch" in r}
        if done:
            log.warning(
                "%s holds records of epochs %s: continuing that run (they are not evaluated "
                "again); pass another run_dir to start over",
                self.run.path,
                sorted(done),
            )
        self._done |= done
        settings = {
            "schedule": self.schedule if isinstance(self.schedule, str) else list(self.schedule),
            "epochs": self.epochs,
            "seed": self.seed,
            "n_images": len(self.images),
            "labels": self.labels is not None,
            "n_few_labels": len(self.few_images) if self.few_images is not None else None,
            "metrics": self.metrics,
        }
        self.run.update_status(
            name=name or self.run.path.name,
            method=method,
            arch=arch,
            data=data,
            seed=self.seed,
            status="running",
            epochs=self.epochs,
            error=None,
            config={**dict(config or {}), "labelfree_monitor": settings},
        )
        log.info("LabelFreeMonitor: records go to %s", self.run.metrics_path)

    # ----------------------------------------------------------------------------------------
    # evaluation

    def is_scheduled(self, epoch: int) -> bool:
        """Whether ``epoch`` is on the schedule and has no record yet."""
        if epoch in self._done:
            return False
        if self._planned is None:  # every:N without a planned end
            return epoch % int(str(self.schedule).partition(":")[2]) == 0
        return epoch in self._planned

    def maybe_evaluate(
        self,
        model: torch.nn.Module | Callable[[Tensor], Tensor],
        *,
        epoch: int,
        step: int | None = None,
        loss: float | None = None,
    ) -> dict | None:
        """Evaluate ``model`` if ``epoch`` is scheduled; otherwise return ``None`` at once.

        Args:
            model: An ``nn.Module`` (features from ``embed=``, else its ``embed`` or
                ``features`` method, else ``model(x)``; DDP wrappers are unwrapped) or a plain
                function ``images -> features``.
            epoch: Epochs trained so far (0 = the random initialisation).
            step: Optimizer steps so far, written as the record's ``step``.
            loss: The epoch's mean training loss, written as ``train/loss``.

        Returns:
            The record (as written to ``metrics.jsonl``), or ``None`` when not scheduled.
        """
        if not self.is_scheduled(epoch):
            return None
        return self.evaluate(model, epoch=epoch, step=step, loss=loss)

    def _features(self, model: Any) -> tuple[torch.nn.Module | None, Callable[[Tensor], Tensor]]:
        """The module whose mode and device matter, and what maps a batch to its features."""
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # its forward would run collectives on this rank alone
        if not isinstance(model, torch.nn.Module):
            if not callable(model):
                raise ValueError(
                    f"maybe_evaluate needs an nn.Module or a function images -> features; got "
                    f"{type(model).__name__}."
                )
            return None, model
        if self.embed_fn is not None:
            return model, lambda x: self.embed_fn(model, x)
        for attribute in ("embed", "features"):
            method = getattr(model, attribute, None)
            if inspect.ismethod(method):  # not e.g. VGG's `features` submodule
                return model, method
        return model, model

    def evaluate(
        self,
        model: torch.nn.Module | Callable[[Tensor], Tensor],
        *,
        epoch: int,
        step: int | None = None,
        loss: float | None = None,
    ) -> dict:
        """Evaluate now, scheduled or not; arguments and return value as :meth:`maybe_evaluate`."""
        start = time.perf_counter()
        module, features = self._features(model)

        device = self.device
        if device is None and module is not None:
            param = next(module.parameters(), None)
            device = param.device if param is not None else None

        def on_device(x: Tensor | None) -> Tensor | None:
            if x is None or device is None or x.device == device:
                return x
            key = (id(x), device)
            if key not in self._on_device:  # one copy per device, not one per evaluation
                self._on_device[key] = x.to(device)
            return self._on_device[key]

        common = {"batch_size": self.batch_size, "features": features}
        with torch.no_grad():
            z = embed(module, on_device(self.images), normalize=self.normalize, **common)
            train_z = None
            if self.few_images is not None:
                train_z = embed(
                    module, on_device(self.few_images), normalize=self.normalize, **common
                )
            views = None
            if self.view_images is not None:
                views = embed_views(
                    module,
                    on_device(self.view_images),
                    self.augment,
                    n_views=self.n_views,
                    seed=self.seed,
                    **common,
                )
        values = compute_metrics(
            z,
            config=self.metrics,
            labels=self.labels,
            train_embeddings=train_z,
            train_labels=self.few_labels,
            views=views,
            seed=self.seed + epoch,
        )
        record = make_record(
            epoch=epoch,
            step=step,
            wall_s=start - self._started,
            eval_s=time.perf_counter() - start,
            loss=float(loss) if loss is not None else None,
            metrics=values,
        )
        self._write(record)
        return record

    def _write(self, record: dict) -> None:
        epoch = record["epoch"]
        if self.run is not None:
            self.run.append_record(record)
            last = self.epochs is not None and epoch >= self.epochs
            self.run.update_status(last_epoch=epoch, **({"status": "completed"} if last else {}))
        if self.logger is not None:
            if hasattr(self.logger, "log_record"):
                self.logger.log_record(record)
            else:
                self.logger(record)
        self.records.append(record)
        self._done.add(epoch)
        log.info(summary_line(record))

    # ----------------------------------------------------------------------------------------
    # end

    def close(self, status: str = "completed", error: str | None = None) -> None:
        """Mark the run ``status`` in ``run.json`` (``completed``, ``failed``, ``interrupted``).

        The logger is left open: it belongs to the caller.
        """
        if status not in STATUSES:
            raise ValueError(f"status={status!r} is not one of: {', '.join(STATUSES)}.")
        if self.run is not None:
            elapsed = round(time.perf_counter() - self._started, 1)
            self.run.update_status(status=status, error=error, wall_s=elapsed)

    def __enter__(self) -> LabelFreeMonitor:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        if kind is None:
            self.close("completed")
        elif issubclass(kind, KeyboardInterrupt):
            self.close("interrupted", "KeyboardInterrupt")
        else:
            self.close("failed", f"{kind.__name__}: {str(error).splitlines()[0] if error else ''}")

    @property
    def last(self) -> dict | None:
        """The latest record, or ``None`` before the first evaluation."""
        return self.records[-1] if self.records else None

    def __repr__(self) -> str:
        planned = sorted(self._planned) if self._planned is not None else self.schedule
        return (
            f"LabelFreeMonitor({len(self.images)} images, metrics={self.metrics.get('name')!r}, "
            f"epochs={planned}, run_dir={str(self.run.path) if self.run else None!r})"
        )
