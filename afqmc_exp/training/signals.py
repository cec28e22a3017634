"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (a pre-empted cluster job) ask the trainer to stop at the next
optimizer step, after a checkpoint, so a killed run can resume. A second Ctrl-C stops at once.

A job of submitit (``hydra/launcher=slurm`` or ``submitit_local``) is warned before its time limit or its preemption
by submitit's signal (``SIGUSR2`` by default; ``SUBMITIT_PREEMPT_SIGNAL=USR1`` where a cluster is set up with
``SIGUSR1``: those two are the ones taken here). submitit's own handler requeues the job at once, in the middle of a
step, so the steps since the last checkpoint would be lost. While a run trains, that signal is taken here instead:
the trainer saves a checkpoint at the next step and stops with :class:`Preempted`, and the train command, once the
MLflow run is closed, hands the job back to submitit's handler (:meth:`Preempted.requeue`), which requeues it. A
warning that comes after the last step's check stops the run as training ends, the same way. The requeued job meets
its own folder again and continues it: the same MLflow run, from that checkpoint (``commands/earlier_run``). A
``SIGTERM`` (``scancel``) stops the run as Ctrl-C does, without a requeue."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)
STOPPING = (signal.SIGINT, signal.SIGTERM)
WARNING_OF_PREEMPTION = (signal.SIGUSR1, signal.SIGUSR2)  # taken only where a handler (submitit's) listens


class Preempted(KeyboardInterrupt):
    """The run stopped, checkpointed, on a job scheduler's warning; :meth:`requeue` gives the job back to it."""

    def __init__(self, message: str, signum: int, scheduler_handler):
        super().__init__(message)
        self.signum, self.scheduler_handler = signum, scheduler_handler

    def requeue(self) -> None:
        """The scheduler's own handler, called as the signal would have called it: submitit saves its job and
        requeues it, then exits this process."""
        self.scheduler_handler(self.signum, None)


class GracefulStop:
    """While entered, SIGINT/SIGTERM (and a scheduler's warning of preemption) set ``requested`` instead of
    stopping; the trainer checks it and raises :meth:`stopped`."""

    def __init__(self):
        self.requested = False
        self.preempted_by: int | None = None  # the scheduler's signal, when that is what stops the run
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if signum in WARNING_OF_PREEMPTION:
            self.preempted_by = signum
            log.warning("%s received (the job scheduler will stop this job): saving a checkpoint, then the job is "
                        "requeued and continues from it", signal.Signals(signum).name)  # fmt: skip
            return
        log.warning(
            "%s received: saving a checkpoint and stopping (Ctrl-C again to stop at once)", signal.Signals(signum).name
        )

    def stopped(self, message: str) -> KeyboardInterrupt:
        """What the trainer raises once its checkpoint is saved: :class:`Preempted` on a scheduler's warning."""
        if self.preempted_by is None:
            return KeyboardInterrupt(message)
        return Preempted(message, self.preempted_by, self._previous[self.preempted_by])

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOPPING:
                self._previous[sig] = signal.signal(sig, self._handle)
            for sig in WARNING_OF_PREEMPTION:
                if callable(signal.getsignal(sig)):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.preempted_by is not None and exc_type is None:  # warned after the last step: requeued all the same
            raise self.stopped("warned by the job scheduler as training ended")
