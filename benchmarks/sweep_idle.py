"""Idle slots of an uneven Optuna search: trials launched in batches (Hydra's sweepers) against trials that start
the moment a slot frees (afqmc-exp's sweeper, ``hydra.sweeper.async_trials``).

    python benchmarks/sweep_idle.py [--jobs 4] [--trials 24] [--unit 0.5] [--rounds 2]
    python benchmarks/sweep_idle.py --train [--jobs 2] [--trials 8] [--rounds 1]

The same search both ways: ``AfqmcOptunaSweeper`` asks and tells every trial in an Optuna study on SQLite, and a
launcher runs each job in a slot of its own for a duration set by the trial's number (a third of the trials are
long, as full runs are beside pruned ones: ``DURATIONS`` units each). The launcher stands in for joblib's pool
(every job of a launch in parallel; the launch returns when the last one ends), so what is measured is the
sweeper's scheduling, not training. Per arm, alternating over ``--rounds``: the makespan and the slot idle
``1 - sum(job spans) / (jobs x makespan)``; last, one JSON line with both and their ratio.

``--train`` runs the search for real instead: ``train.py`` on the shipped sample (``experiment=quickstart``), its
jobs in joblib's processes, the searched parameter ``trainer.max_steps`` (2 or 40 optimizer steps, as a pruned trial
beside a full one; the seeded sampler gives both arms the same mix). Each job's span is read from its own folder
(the first and last line of its ``train.log``), the makespan from the first job's start to the last one's end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


SEARCH = """# @package _global_
defaults:
  - override /hydra/sweeper: afqmc_optuna
hydra:
  mode: MULTIRUN
  sweeper:
    study_name: idle
    pruner: {type: none}
    params:
      trainer.max_steps: {type: categorical, choices: [2, 40]}
"""


def one_training_search(jobs: int, trials: int, async_trials: bool, work: Path) -> dict:
    """The search run by ``train.py`` (see the module docstring); spans from the jobs' own ``train.log``."""
    arm = f"{'slots' if async_trials else 'batches'}-{time.time_ns()}"
    (work / "extra" / "hparams_search").mkdir(parents=True, exist_ok=True)
    (work / "extra" / "hparams_search" / "idle.yaml").write_text(SEARCH)
    cmd = [sys.executable, str(REPO / "train.py"), f"hydra.searchpath=[file://{work / 'extra'}]", "hparams_search=idle",
           "experiment=quickstart", "trainer.eval_every=null", "data.dev_limit=50", "trainer.progress_bar=false",
           "tracking.log_weights=false", f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "hydra/launcher=joblib",
           f"hydra.launcher.n_jobs={jobs}", f"hydra.sweeper.n_jobs={jobs}", f"hydra.sweeper.n_trials={trials}",
           f"hydra.sweeper.async_trials={str(async_trials).lower()}",
           f"hydra.sweeper.storage=sqlite:///{work / arm}.db", f"hydra.sweep.dir={work / arm}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=work, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the search failed:\n{done.stderr[-3000:]}")
    spans = [log_span(log) for log in (work / arm).glob("*/train.log")]
    makespan = max(end for _, end in spans) - min(start for start, _ in spans)
    busy = sum(end - start for start, end in spans)
    return {"makespan_s": round(makespan, 3), "slot_idle": round(1 - busy / (jobs * makespan), 3)}


def log_span(log: Path) -> tuple[float, float]:
    """The times of a log's first and last line (Hydra's ``[2026-12-06 08:10:31,121]``), in seconds."""
    from datetime import datetime

    stamps = [line[1:24] for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("[20")]
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp() for s in (stamps[0], stamps[-1]))
    return first, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--unit", type=float, default=0.5, help="seconds of one duration unit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="real trainings of 2 or 40 steps (see the docstring)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sweep-idle-")) if args.train else None  # the trainings' folders, kept
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    arms = {"batches (Hydra)": False, "slots (afqmc-exp)": True}
    measured = {name: [] for name in arms}
    for _ in range(args.rounds):  # alternating arms: a machine that slows down slows both
        for name, async_trials in arms.items():
            measured[name].append(one_training_search(args.jobs, args.trials, async_trials, work) if args.train
                                  else one_search(args.jobs, args.trials, args.unit, async_trials))  # fmt: skip
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
