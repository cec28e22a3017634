"""Idle slots of an uneven Optuna search: trials launched in batches (Hydra's sweepers) against trials that start
the moment a slot frees (afqmc-exp's sweeper, ``hydra.sweeper.async_trials``).

    python benchmarks/sweep_idle.py [--jobs 4] [--trials 24] [--unit 0.5] [--rounds 2]

The same search both ways: ``AfqmcOptunaSweeper`` asks and tells every trial in an Optuna study on SQLite, and a
launcher runs each job in a slot of its own for a duration set by the trial's number (a third of the trials are
long, as full runs are beside pruned ones: ``DURATIONS`` units each). The launcher stands in for joblib's pool
(every job of a launch in parallel; the launch returns when the last one ends), so what is measured is the
sweeper's scheduling, not training. Per arm, alternating over ``--rounds``: the makespan and the slot idle
``1 - sum(job spans) / (jobs x makespan)``; last, one JSON line with both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DURATIONS = (4, 1, 1)  # a long trial, then two short ones (pruned early), over and over: units of --unit seconds


class SlotLauncher:
    """Hydra's launcher as the sweeper sees it: each job of a launch in its own thread, for its trial's duration;
    the launch returns when all of them ended. Spans are recorded."""

    def __init__(self, unit: float):
        self.unit, self.spans, self.lock = unit, [], threading.Lock()

    def launch(self, batch, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        def job(overrides) -> None:
            trial = int(next(o for o in overrides if o.startswith("+optuna.trial=")).split("=")[1])
            start = time.perf_counter()
            time.sleep(DURATIONS[trial % len(DURATIONS)] * self.unit)  # the work a trial stands for
            with self.lock:
                self.spans.append((start, time.perf_counter()))

        threads = [threading.Thread(target=job, args=(overrides,)) for overrides in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results = []
        for _ in batch:
            result = JobReturn()
            result.status, result.return_value = JobStatus.COMPLETED, 0.5
            results.append(result)
        return results


def one_search(jobs: int, trials: int, unit: float, async_trials: bool) -> dict:
    from omegaconf import OmegaConf

    from hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper import AfqmcOptunaSweeper

    with tempfile.TemporaryDirectory() as tmp:
        params = {"optim.lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}}
        sweeper = AfqmcOptunaSweeper(trials, jobs, f"sqlite:///{tmp}/optuna.db", "idle", "maximize", 0, params,
                                     pruner={"type": "median"}, async_trials=async_trials)  # fmt: skip
        sweeper.config = OmegaConf.create({"trainer": {"metric": "accuracy"}, "hydra": {"sweep": {"dir": tmp}}})
        sweeper.launcher = SlotLauncher(unit)
        started = time.perf_counter()
        sweeper.sweep([])
        makespan = time.perf_counter() - started
    busy = sum(end - start for start, end in sweeper.launcher.spans)
    return {"makespan_s": round(makespan, 3), "slot_idle": round(1 - busy / (jobs * makespan), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--unit", type=float, default=0.5, help="seconds of one duration unit")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    arms = {"batches (Hydra)": False, "slots (afqmc-exp)": True}
    measured = {name: [] for name in arms}
    for _ in range(args.rounds):  # alternating arms: a machine that slows down slows both
        for name, async_trials in arms.items():
            measured[name].append(one_search(args.jobs, args.trials, args.unit, async_trials))
            print(f"{name:>18}: {measured[name][-1]}", flush=True)
    mean = {
        name: {k: round(sum(r[k] for r in runs) / len(runs), 3) for k in runs[0]} for name, runs in measured.items()
    }
    batches, slots = mean["batches (Hydra)"], mean["slots (afqmc-exp)"]
    summary = {**mean, "makespan_ratio": round(slots["makespan_s"] / batches["makespan_s"], 3),
               "jobs": args.jobs, "trials": args.trials}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
