"""Preemption-safe writes: hold SLURM's and submitit's signals while one fact goes to two places.

submitit handles SIGUSR2 (a SLURM preemption or time limit) by checkpointing the job, requeueing
it and exiting wherever the main thread is. A record that must reach both ``metrics.jsonl`` and
the logger, or a checkpoint and the loss logged for its epoch, would be cut in half; a resumed run
never re-logs what one of them lacks. :func:`deferred_preemption` delivers such signals after the
block instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


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
