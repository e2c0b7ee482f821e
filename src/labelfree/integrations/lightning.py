"""PyTorch Lightning: the label-free monitor as a callback (``pip install 'labelfree[lightning]'``).

::

    from labelfree.integrations.lightning import LabelFreeCallback

    callback = LabelFreeCallback(heldout, k=10, run_dir="runs/simclr-s0",
                                 embed=lambda module, x: module.backbone(x))
    pl.Trainer(max_epochs=100, callbacks=[callback]).fit(model, loader)

:class:`LabelFreeCallback` builds a :class:`~labelfree.monitor.LabelFreeMonitor` when training
starts (``epochs`` defaults to the trainer's ``max_epochs``), evaluates the random
initialisation (or the epoch a resumed fit starts from) and then each scheduled epoch as it
ends, on global rank 0 only, and logs every record to the trainer's loggers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import pytorch_lightning as pl
except ImportError:  # an optional dependency: say how to get it, not a bare ModuleNotFoundError
    raise ImportError(
        "labelfree.integrations.lightning needs PyTorch Lightning: pip install "
        "'labelfree[lightning]' (pytorch-lightning>=2.0)."
    ) from None
import torch
from torch import Tensor

from labelfree.monitor import LabelFreeMonitor
from labelfree.records import LABEL_FREE_PREFIX, LABEL_PREFIX

__all__ = ["LabelFreeCallback"]


class LabelFreeCallback(pl.Callback):
    """Label-free metrics of a fixed held-out set at scheduled epochs of a Lightning fit.

    Epoch numbers are epochs completed: 0 is evaluated in ``on_train_start`` (the random
    initialisation), epoch ``e`` in the ``on_train_epoch_end`` of Lightning's epoch ``e - 1``.
    Under DDP only global rank 0 embeds and writes (the other ranks go on and wait for it at
    their next collective); it calls the LightningModule itself, never the DDP wrapper. Each
    record's metrics and ``eval_s`` go to every logger of ``trainer.loggers``
    (``log_metrics`` at the trainer's ``global_step``, with ``epoch``), and to ``run_dir``
    when given. The run is marked ``completed`` when the fit ends, ``failed`` or
    ``interrupted`` when it raises.

    Args:
        images: The held-out images (see :class:`~labelfree.monitor.LabelFreeMonitor`).
        embed: ``embed(module, x) -> features``; ``None``: the module's ``embed`` or
            ``features`` method, else ``module(x)``. Lightly-style modules whose ``forward``
            returns the projector's output want ``lambda module, x: module.backbone(x)``.
        loss_key: A key of ``trainer.callback_metrics`` written as the record's ``train/loss``
            (e.g. ``"train_loss"`` when the module logs ``self.log("train_loss", ...,
            on_epoch=True)``); ``None``: no loss.
        **monitor_options: Keyword arguments of :class:`~labelfree.monitor.LabelFreeMonitor`
            (``metrics``, ``k``, ``labels``, ``few_labels``, ``augment``, ``run_dir``,
            ``schedule``, ...); ``epochs`` defaults to ``trainer.max_epochs`` and ``config``
            to the module's ``hparams``.

    Attributes:
        monitor: The monitor (on rank 0, once training started), with its ``records``.
    """

    def __init__(
        self,
        images: Any,
        *,
        embed: Callable[[torch.nn.Module, Tensor], Tensor] | None = None,
        loss_key: str | None = None,
        **monitor_options: Any,
    ):
        super().__init__()
        if "logger" in monitor_options:
            raise ValueError(
                "LabelFreeCallback logs to the trainer's loggers: drop logger= (pass "
                "pl.Trainer(logger=...) instead)."
            )
        self.images, self.embed, self.loss_key = images, embed, loss_key
        self.options = monitor_options
        self.monitor: LabelFreeMonitor | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the monitor (rank 0) and evaluate the epoch training starts from."""
        if not trainer.is_global_zero:
            return
        if self.monitor is None:
            options = dict(self.options)
            max_epochs = trainer.max_epochs
            options.setdefault("epochs", max_epochs if max_epochs and max_epochs > 0 else None)
            options.setdefault("config", dict(getattr(pl_module, "hparams", {}) or {}))
            self.monitor = LabelFreeMonitor(self.images, embed=self.embed, **options)
        self._evaluate(trainer, pl_module, epoch=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate the epoch that just ended, if it is scheduled."""
        if trainer.is_global_zero and self.monitor is not None:
            self._evaluate(trainer, pl_module, epoch=trainer.current_epoch + 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Mark the run completed."""
        if trainer.is_global_zero and self.monitor is not None:
            self.monitor.close("completed")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Mark the run interrupted (Ctrl-C) or failed, with the error's first line."""
        if trainer.is_global_zero and self.monitor is not None:
            interrupted = isinstance(exception, KeyboardInterrupt)
            message = str(exception).splitlines()[0] if str(exception) else ""
            self.monitor.close(
                "interrupted" if interrupted else "failed",
                f"{type(exception).__name__}: {message}",
            )

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, epoch: int) -> None:
        loss = trainer.callback_metrics.get(self.loss_key) if self.loss_key else None
        record = self.monitor.maybe_evaluate(
            pl_module,
            epoch=epoch,
            step=trainer.global_step,
            loss=float(loss) if loss is not None and epoch > 0 else None,
        )
        if record is None:
            return
        values = {
            key: value
            for key, value in record.items()
            if key.startswith((LABEL_FREE_PREFIX, LABEL_PREFIX)) and value is not None
        }
        values.update(epoch=epoch, eval_s=record["eval_s"])
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
