"""Preemption under submitit: hold its signal while one fact goes to two places; act before it.

submitit handles SIGUSR2 (a SLURM preemption or time limit) by checkpointing the job, requeueing
it and exiting wherever the main thread is. Two things must not be cut short by that:

- a record that must reach both ``metrics.jsonl`` and the logger, or a checkpoint and the loss
  logged for its epoch: a resumed run never re-logs what one of them lacks.
  :func:`deferred_preemption` delivers the signal after such a block instead;
- the W&B run: ``scontrol requeue`` makes SLURM send SIGTERM to every process of the job at
  once, and W&B's service process (``wandb-core``, a Go program: it dies of SIGTERM even when
  started with SIGTERM ignored) dies with whatever it had not written yet.
  :func:`before_requeue` closes the run first, then lets submitit requeue.

:func:`preemption_signalled` tells a DDP rank other than 0, whose peer left for a requeue, that
its broken collective is the requeue and not a failure.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: When this process last received the preemption signal (``time.time()``), or None.
_signalled_at: float | None = None


def preemption_signalled() -> bool:
    """Whether this process received the preemption signal while :func:`before_requeue` ran."""
    return _signalled_at is not None


@contextmanager
def deferred_preemption(
    signums: tuple[int, ...] = (signal.SIGUSR2, signal.SIGTERM),
) -> Iterator[None]:
    """Hold preemption signals until the block ends, then deliver them.

    submitit's SIGUSR2 handler (SLURM preemption or time limit) checkpoints, requeues and raises
    ``SystemExit`` wherever the main thread is. Inside this block it waits, so a block that writes
    the same fact to two places (metrics.jsonl and W&B; the checkpoint and the logged loss) is
    never cut in half; a resumed run would otherwise never re-log what one of them lacks. Python
    runs signal handlers in the main thread whichever thread receives the signal, so swapping the
    handlers there is enough; elsewhere (a worker thread) the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for num in signums:
        if signal.getsignal(num) is not None:  # None: a handler set outside Python, left alone
            previous[num] = signal.signal(num, lambda n, _frame: received.append(n))
    try:
        yield
    finally:
        for num, handler in previous.items():
            signal.signal(num, handler)
        for num in received:
            signal.raise_signal(num)


@contextmanager
def before_requeue(callback: Callable[[], None], signum: int = signal.SIGUSR2) -> Iterator[None]:
    """Run ``callback`` when the preemption signal arrives, then the handler already installed.

    Only where a Python handler is installed (submitit's, which requeues the job): elsewhere
    the signal keeps its default action (the process ends) and nothing is wrapped. Python runs
    signal handlers in the main thread, where this must be entered. The callback runs before
    submitit's ``scontrol requeue`` (after which SLURM sends SIGTERM to every process of the
    job); an error in it is logged, and the requeue goes on. Every process, DDP ranks other
    than 0 included (whose submitit handler does nothing), notes that the signal came
    (:func:`preemption_signalled`).
    """
    previous = signal.getsignal(signum)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return

    def handler(num: int, frame) -> None:
        global _signalled_at
        _signalled_at = time.time()
        try:
            callback()
        except Exception as err:  # noqa: BLE001 - the requeue matters more than the callback
            log.warning("Before the requeue: %s: %s", type(err).__name__, err)
        previous(num, frame)

    signal.signal(signum, handler)
    try:
        yield
    finally:
        if signal.getsignal(signum) is handler:
            signal.signal(signum, previous)
