"""Stopping a run cleanly (``training/signals.py``): the first SIGINT or SIGTERM asks the trainer to stop after a
checkpoint; a second Ctrl-C stops at once; the handlers before are put back. Signals sent to this very process, so
each is delivered before the next line runs (no other process, no waiting)."""

import os
import signal

import pytest

from afqmc_exp.training.signals import GracefulStop


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_first_signal_asks_to_stop_and_says_what_happens_next(first, caplog):
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), first)
        assert stop.requested
    (said,) = [r.getMessage() for r in caplog.records if r.name == "afqmc_exp.training.signals"]
    assert said == f"{first.name} received: saving a checkpoint and stopping (Ctrl-C again to stop at once)"


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_second_ctrl_c_stops_at_once(first):
    with GracefulStop() as stop:
        os.kill(os.getpid(), first)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested


def test_a_second_sigterm_only_asks_again():
    """A cluster may send SIGTERM more than once before its kill: the checkpoint being saved is not cut short."""
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested


def test_the_handlers_before_are_put_back():
    seen, interrupt = [], signal.getsignal(signal.SIGINT)  # Python's, or ignored (a job started in the background)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with GracefulStop():
            assert signal.getsignal(signal.SIGINT) is not interrupt
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM] and signal.getsignal(signal.SIGINT) is interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_nothing_is_installed():
    import threading

    before, installed = signal.getsignal(signal.SIGINT), []

    def enter():
        with GracefulStop():
            installed.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert installed == [before]


def test_a_scheduler_s_warning_is_taken_only_where_the_scheduler_listens_and_handed_back_after_the_checkpoint():
    """submitit listens on SIGUSR2 (or SIGUSR1) and requeues at once; while a run trains the warning asks for a
    checkpoint first, and the stop raised after it (``Preempted``) gives the job back to submitit's handler."""
    from afqmc_exp.training.signals import Preempted

    requeued = []
    scheduler = lambda signum, frame: requeued.append(signum)  # noqa: E731  (submitit's checkpoint_and_try_requeue)
    previous = signal.signal(signal.SIGUSR2, scheduler)
    try:
        with pytest.raises(Preempted) as stopped, GracefulStop() as stop:
            assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # nobody listens there: left alone
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested and requeued == []
            raise stop.stopped("stopped by a signal at step 3")  # as the trainer does, after its checkpoint
        assert signal.getsignal(signal.SIGUSR2) is scheduler and str(stopped.value) == "stopped by a signal at step 3"
        stopped.value.requeue()
        assert requeued == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_stop_asked_by_ctrl_c_or_sigterm_is_a_plain_interrupt():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        stopped = stop.stopped("stopped")
    assert type(stopped) is KeyboardInterrupt


def test_a_scheduler_s_warning_after_the_last_step_still_stops_the_run_for_its_requeue():
    """Warned during the final evaluation: no step checks the request again, so leaving training raises it."""
    from afqmc_exp.training.signals import Preempted

    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)  # submitit's handler stands listening
    try:
        with pytest.raises(Preempted, match="warned by the job scheduler as training ended"):
            with GracefulStop():
                os.kill(os.getpid(), signal.SIGUSR2)  # after the loop's last look at the request
    finally:
        signal.signal(signal.SIGUSR2, previous)
