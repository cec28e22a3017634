"""``trainer.profile_steps`` (``debug=profile``): a torch.profiler trace of a few training steps.

It writes into the run's ``profile/`` folder (logged with the run's artifacts): a Chrome/Perfetto trace,
a table of the most expensive operators, and ``summary.json`` with the wall time of the profiled steps
and, on a GPU, how much of it the GPU spent computing (``gpu_busy``: the kernels' time over the wall
time). A GPU that is busy a small part of a step is waiting for the CPU to launch its kernels; that
is what to fix first. The profiler slows the CPU side, so ``gpu_busy`` is a lower bound.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
WARMUP_STEPS = 2


def device_seconds(profiler) -> float:
    """Time the GPU spent in kernels during the profiled steps (0 without a GPU)."""
    events = profiler.key_averages()
    name = (
        "self_device_time_total" if events and hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    )
    return sum(getattr(event, name, 0) for event in events) / 1e6


class _Window:
    """Wall time of the active (profiled) steps: from the end of the warm-up to the trace."""

    def __init__(self, skip: int):
        self.steps, self.started, self.skip = 0, None, skip

    def step(self) -> None:
        self.steps += 1
        if self.steps == self.skip + WARMUP_STEPS:
            _synchronize()
            self.started = time.perf_counter()

    def seconds(self) -> float:
        _synchronize()
        return time.perf_counter() - (self.started or time.perf_counter())


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def profiled(steps: int, folder: Path, skip: int = 0):
    """A started profiler over ``steps`` optimizer steps after ``skip`` unprofiled and 2 of warm-up (call its
    ``step()`` after each optimizer step), or None when ``steps`` is 0."""
    if steps <= 0:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile, schedule

    window = _Window(skip)

    def save(prof) -> None:
        wall = window.seconds()
        folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(folder / "trace.json"))
        (folder / "operators.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        summary = {"steps": steps, "wall_s": wall, "seconds_per_step": wall / steps}
        if torch.cuda.is_available():
            summary.update(device_s=device_seconds(prof), gpu_busy=device_seconds(prof) / wall)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        busy = f", GPU busy {summary['gpu_busy']:.0%} of it" if "gpu_busy" in summary else ""
        log.info("profile of %d steps (%.1f ms each%s) written to %s", steps, 1000 * wall / steps, busy, folder)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profiler = profile(
        activities=activities,
        schedule=schedule(wait=skip, warmup=WARMUP_STEPS, active=steps, repeat=1),
        on_trace_ready=save,
        record_shapes=True,
    )
    real_step = profiler.step

    def step() -> None:
        window.step()
        real_step()

    profiler.step = step
    profiler.start()
    try:
        yield profiler
    finally:
        profiler.stop()
