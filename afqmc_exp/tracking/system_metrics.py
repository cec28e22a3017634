"""System metrics of a run (the MLflow UI's "System metrics" tab): CPU, memory and, on a GPU, its memory and
utilisation, sampled by a thread every ``interval`` seconds into the run's metrics under ``system/``.

MLflow has a monitor of its own, but it writes to the store directly from its thread, so a store that
stops answering fills the log with its failures; these samples go through the run's outbox like every
other metric (see ``outbox``). The names are MLflow's, so the UI groups them the same way.
"""

from __future__ import annotations

import threading

import torch


def sample() -> dict[str, float]:
    """One reading of the machine (and of the GPU this process uses, when there is one)."""
    import psutil  # an Accelerate dependency

    memory = psutil.virtual_memory()
    values = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(),
        "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
        "system/system_memory_usage_percentage": memory.percent,
        "system/process_memory_rss_megabytes": psutil.Process().memory_info().rss / 2**20,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info()
        values["system/gpu_0_memory_usage_megabytes"] = (total - free) / 2**20
        values["system/gpu_0_memory_usage_percentage"] = 100 * (total - free) / total
        try:
            values["system/gpu_0_utilization_percentage"] = float(torch.cuda.utilization())
        except Exception:  # (needs NVML, which not every install has)
            pass
    return values


class SystemMetrics:
    """Samples into ``log_metrics(values, step)`` from a daemon thread between ``start()`` and ``stop()``."""

    def __init__(self, log_metrics, interval: float = 10.0, first_step: int = 0):
        self.log_metrics, self.interval, self.step = log_metrics, interval, first_step
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)

    def start(self) -> SystemMetrics:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.log_metrics(sample(), self.step)
            self.step += 1
