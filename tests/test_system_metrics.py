"""System metrics (``tracking/system_metrics.py``): one reading of the machine under MLflow's names, and a sampler
thread that logs readings at consecutive steps from where a resumed run's last one stopped, until stopped."""

import threading

from afqmc_exp.tracking.system_metrics import SystemMetrics, sample


def test_a_reading_names_cpu_and_memory_as_mlflow_does():
    reading = sample()
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage", "system/process_memory_rss_megabytes"} <= set(reading)  # fmt: skip
    assert 0 <= reading["system/system_memory_usage_percentage"] <= 100
    assert reading["system/process_memory_rss_megabytes"] > 10  # this Python, torch imported


def test_the_sampler_logs_consecutive_steps_from_the_first_it_is_given_and_stops():
    logged, three = [], threading.Event()

    def log_metrics(values, step):
        logged.append((step, set(values)))
        if len(logged) == 3:
            three.set()

    sampler = SystemMetrics(log_metrics, interval=0.01, first_step=7).start()
    assert three.wait(timeout=60)  # woken by the third reading, not by a guessed delay
    sampler.stop()
    count = len(logged)
    assert [step for step, _ in logged] == list(range(7, 7 + count)) and not sampler._thread.is_alive()
    assert all("system/cpu_utilization_percentage" in keys for _, keys in logged)
