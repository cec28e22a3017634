"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (a pre-empted cluster job) ask the trainer to stop at
the next optimizer step, after a checkpoint, so a killed run can resume. A second Ctrl-C stops at once."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class GracefulStop:
    """While entered, SIGINT/SIGTERM set ``requested`` instead of stopping; the trainer checks it."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "%s received: saving a checkpoint and stopping (Ctrl-C again to stop at once)", signal.Signals(signum).name
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
