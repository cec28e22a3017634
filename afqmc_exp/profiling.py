"""``trainer.profile_steps`` (``debug=profile``): a torch.profiler trace of a few training steps.

It writes a Chrome/Perfetto trace and a table of the most expensive operators into the run's
``profile/`` folder, which is logged with the run's artifacts.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def profiled(steps: int, folder: Path):
    """A started profiler over ``steps`` optimizer steps after 2 of warm-up (call its ``step()`` after each
    optimizer step), or None when ``steps`` is 0."""
    if steps <= 0:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile, schedule

    def save(prof) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(folder / "trace.json"))
        (folder / "operators.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        log.info("profile of %d steps written to %s", steps, folder)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profiler = profile(
        activities=activities,
        schedule=schedule(wait=0, warmup=2, active=steps, repeat=1),
        on_trace_ready=save,
        record_shapes=True,
    )
    profiler.start()
    try:
        yield profiler
    finally:
        profiler.stop()
