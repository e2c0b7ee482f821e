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


def test_before_requeue_runs_its_callback_then_the_installed_handler(caplog):
    """The callback (closing W&B) runs before submitit's handler (which requeues); an error in it
    is logged and the handler still runs; the process notes that the signal came."""
    import os
    import signal

    from labelfree import preemption

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda num, _frame: calls.append(("handler", num)))
    try:
        with preemption.before_requeue(lambda: calls.append("callback")):
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(1000):
                pass
        assert calls == ["callback", ("handler", signal.SIGUSR2)]
        assert preemption.preemption_signalled()

        def broken():
            raise OSError("the W&B service is gone")

        calls.clear()
        # held inside deferred_preemption, then delivered to the wrapper
        with (
            caplog.at_level("WARNING"),
            preemption.before_requeue(broken),
            preemption.deferred_preemption(),
        ):
            os.kill(os.getpid(), signal.SIGUSR2)
            assert calls == []
        assert calls == [("handler", signal.SIGUSR2)]
        assert "Before the requeue: OSError: the W&B service is gone" in caplog.text
        os.kill(os.getpid(), signal.SIGUSR2)  # the original handler is back, unwrapped
        assert calls == [("handler", signal.SIGUSR2)] * 2
    finally:
        signal.signal(signal.SIGUSR2, previous)
        preemption._signalled_at = None


def test_before_requeue_leaves_a_default_signal_alone():
    """Without submitit (USR2 at its default action: the process ends) nothing is wrapped."""
    import signal

    from labelfree.preemption import before_requeue

    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with before_requeue(lambda: None):
            assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)
