"""deferred_preemption: a signal inside the block is delivered after it."""


def test_preemption_signal_waits_for_the_end_of_a_deferred_block():
    """SIGUSR2 (submitit's preemption signal) inside deferred_preemption runs its handler only
    after the block, so metrics.jsonl and the logger never disagree about a record."""
    import os
    import signal

    from labelfree.preemption import deferred_preemption

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda num, _frame: calls.append(num))
    try:
        with deferred_preemption():
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(1000):  # give Python every chance to run a handler here
                pass
            assert calls == []
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is not None  # the original handler is back
        os.kill(os.getpid(), signal.SIGUSR2)
        assert calls == [signal.SIGUSR2, signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
