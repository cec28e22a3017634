"""A Hydra sweeper that drives Optuna's own API: ``python train.py hparams_search=afqmc_optuna``.

Why not ``hydra-optuna-sweeper``: its 1.3.0 release pins ``optuna<3``, pip then installs optuna 2.10,
whose SQLite storage crashes under SQLAlchemy 2 (which MLflow needs); installing it without its pin
breaks ``pip check``. This sweeper is small and uses only Optuna's stable ask/tell API, so the project
installs cleanly with a current Optuna.

* The study lives in a storage (default ``sqlite:///optuna.db`` beside where you start), loaded if it
  exists: a stopped search resumes where it was. ``n_trials`` is the study's total, so running the same
  command again after a stop runs only the trials still missing. A trial left RUNNING is failed only when
  its search's heartbeat has stopped for a minute (a killed search); two searches on one storage (a second
  terminal, a requeued job) leave each other's trials alone, each counting the other's as taken, and together
  run ``n_trials`` and no more (a trial asked past the total in a race is not run: ``_ask``). Workers that meet a
  new server database (PostgreSQL, MySQL) at once each create Optuna's tables, and all but one fail on the
  others' (optuna#1092, left to users there): a worker that fails so tries again, and then finds them
  (``rdb_storage``). A SQLite file's first contact is made by one worker at a time (``store_lock``).
* A trial whose job raises or returns NaN is told to Optuna as FAIL and the search goes on.
* Pruning (``pruner``: median, hyperband, threshold or none; see ``afqmc_exp.training.pruning``): each job is told
  its trial (``+optuna.storage/study/trial/pruner``), reports its dev metric at every evaluation and stops
  when the pruner says so; the trial is told PRUNED.
* The direction follows ``trainer.metric`` (maximise f1/accuracy/auc, minimise loss) unless set.
* Hydra's launcher runs the trials, ``n_jobs`` at a time (``hydra/launcher=joblib`` to run them in
  parallel); each is a normal training run, nested under the sweep's MLflow parent run (one parent per study,
  however many workers run it: ``afqmc_exp.tracking.sweep``).
* Trials are asynchronous: with ``n_jobs`` > 1 and a launcher that runs jobs outside this process (joblib,
  submitit), a new trial is asked and launched the moment any running one ends (finished, pruned or failed), each
  its own launch from a thread here; Hydra's own sweepers launch a batch and wait for its slowest trial
  (hydra#2461 measured over 25% of GPU time idle that way). ``async_trials=false`` launches in batches; the basic
  launcher runs one job at a time in this process and is always given batches. ``benchmarks/sweep_idle.py``
  measures the idle slots of both.
* A trial's job is numbered as the trial (``numbered_runs``): its folder is ``<sweep dir>/<trial number>``.
"""

# No `from __future__ import annotations` here: Hydra's plugin scanner executes this module outside
# sys.modules, where dataclasses cannot resolve string annotations.
import contextlib
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from afqmc_exp.sweep_folder import SweepFolder  # a sweep folder's file names (light: no torch, no MLflow)

log = logging.getLogger(__name__)


@dataclass
class AfqmcOptunaSweeperConf:
    _target_: str = "hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper.AfqmcOptunaSweeper"
    n_trials: int = 20  # total trials in the study (a resumed search runs only the missing ones)
    n_jobs: int = 1  # trials run at once
    async_trials: bool = True  # a new trial starts the moment one ends (false: in batches of n_jobs, as Hydra does)
    storage: str = "sqlite:///optuna.db"
    study_name: str | None = None  # null: <data option>_<model option>, e.g. afqmc_bert
    direction: str | None = None  # maximize | minimize; null: from trainer.metric
    seed: int = 0  # TPE sampler seed
    # the jobs report each evaluation; {type: median|hyperband|threshold|none, ...the pruner's arguments}
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    # dotted config key -> {type: float|int|categorical, low, high, log, step, choices}
    params: dict[str, Any] = field(default_factory=dict)


SCHEMA_TRIES = 6  # a new server database's tables, created by another worker meanwhile: waits of 0.2 s to 6.4 s
HEARTBEAT_S, GRACE_S = 10, 60  # a running trial beats every 10 s; one silent for 60 s is its dead search's
OVER_TOTAL = "afqmc.over_total"  # a trial asked past n_trials by a worker racing another one: not run, not counted


def rdb_storage(uri: str):
    """Optuna's storage at ``uri``, its tables created if missing. Where another worker creates them at the same
    moment, the database refuses one of the two (a table or type that already exists): tried again, a little later
    each time, it finds them made."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    from afqmc_exp.tracking.masking import mask_uri

    for attempt in range(SCHEMA_TRIES):
        try:
            return optuna.storages.RDBStorage(uri, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except (IntegrityError, ProgrammingError):
            if attempt == SCHEMA_TRIES - 1:
                raise
            log.info("%s: another worker is creating Optuna's tables; trying again", mask_uri(uri))
            time.sleep(0.2 * 2**attempt)


@contextlib.contextmanager
def beating(study, trials):
    """Record the trials' heartbeats while their jobs run (the jobs may be other processes): the proof of life
    another search checks before it fails a RUNNING trial."""
    storage, stop = study._storage, threading.Event()

    def beat():
        for trial in list(trials):  # a set the asynchronous sweep changes as trials start and end
            storage.record_heartbeat(trial._trial_id)

    def keep_beating():
        while not stop.wait(HEARTBEAT_S):
            beat()

    beat()
    thread = threading.Thread(target=keep_beating, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def quiet_optuna() -> None:
    """Optuna's warnings about what this sweeper does on purpose (heartbeats without ``Study.optimize``, the
    experimental heartbeat arguments) say nothing a user can act on: not shown. Its other warnings are."""
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", message=r".*(heartbeat_interval|fail_stale_trials)", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


ConfigStore.instance().store(
    group="hydra/sweeper", name="afqmc_optuna", node=AfqmcOptunaSweeperConf, provider="afqmc_exp"
)


def suggest(trial, name: str, spec: dict) -> Any:
    kind = spec.get("type", "float")
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step"))
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1))
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    raise ValueError(f"hydra.sweeper.params.{name}.type={kind!r}: use float, int or categorical")


def numbered_runs(trials: list) -> list[list]:
    """The trials in runs of consecutive numbers, each one launch: a job is numbered as its trial, so its folder is
    ``<sweep dir>/<trial number>`` whichever worker runs it, and a continued search never meets another trial's
    folder. Workers asking at the same moment can interleave numbers; their batch is then launched in runs."""
    runs: list[list] = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


class AfqmcOptunaSweeper(Sweeper):
    def __init__(
        self,
        n_trials: int,
        n_jobs: int,
        storage: str,
        study_name: str | None,
        direction: str | None,
        seed: int,
        params: dict,
        pruner: dict | None = None,
        async_trials: bool = True,
    ):
        self.n_trials, self.n_jobs, self.storage, self.study_name = n_trials, max(1, n_jobs), storage, study_name
        self.async_trials = async_trials
        self.direction, self.seed = direction, seed
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else dict(params)
        self.pruner = OmegaConf.to_container(pruner, resolve=True) if isinstance(pruner, DictConfig) else pruner

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from afqmc_exp.tracking.sweep import study_name

        self.config = config
        self.study_name = study_name(config)  # named here: ${hydra:...} cannot be resolved before the sweep starts
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list:
        from optuna.trial import TrialState

        study = self._load_study()
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))  # another search's, alive
        log.info(
            "Optuna study %r (%s): %d of %d trials done%s",
            self.study_name,
            study.direction.name.lower(),
            self._taken(study) - running,
            self.n_trials,
            f", {running} running in another search" if running else "",
        )
        sweep = SweepFolder(Path(self.config.hydra.sweep.dir))
        sweep.root.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep.saved_config)  # as Hydra's basic sweeper does: the sweep's config
        in_process = type(self.launcher).__name__ == "BasicLauncher"  # one job at a time in this process anyway
        if self.async_trials and self.n_jobs > 1 and not in_process:
            returns = self._run_as_slots_free(study, arguments)
        else:
            returns = self._run_in_batches(study, arguments)
        self._log_best(study)
        self._say_if_complete(study, sweep)
        return returns

    def _say_if_complete(self, study, sweep: SweepFolder) -> None:
        """Whether the study is complete (every trial of its total told, none running in another worker): the
        sweep's MLflow callback then closes the study's parent run, else leaves it to the last worker."""
        from optuna.trial import TrialState

        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        sweep.save_study(self.study_name, complete=not running and self._taken(study) >= self.n_trials)

    def _job(self, arguments: list, trial) -> list:
        """A trial's job: the command line's overrides, the trial's values, and how it finds its trial."""
        suggested = [f"{name}={suggest(trial, name, spec)}" for name, spec in self.params.items()]
        return list(arguments) + suggested + self._trial_overrides(trial)

    def _run_in_batches(self, study, arguments: list) -> list:
        """``n_jobs`` trials launched together, the next ones once all of them ended (Hydra's sweepers' way)."""
        returns = []
        while trials := self._ask(study, self.n_jobs):
            with beating(study, trials):
                results = [result for run in numbered_runs(trials) for result in self.launcher.launch(
                    [self._job(arguments, t) for t in run], initial_job_idx=run[0].number)]  # fmt: skip
            for trial, result in zip(trials, results, strict=True):
                self._tell(study, trial, result)
            returns.append(results)
        return returns

    def _run_as_slots_free(self, study, arguments: list) -> list:
        """``n_jobs`` slots, each given a new trial the moment its last one ends (finished, pruned or failed): no
        slot waits for the slowest trial of a batch. Each trial is its own launch, from a thread of this process,
        into the launcher's pool (joblib's processes, submitit's jobs); asked, told and kept alive (heartbeats)
        here, as in batches."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        returns, running = [], {}
        with ThreadPoolExecutor(self.n_jobs, thread_name_prefix="trial") as slots, beating(study, alive := set()):

            def fill() -> None:
                while len(running) < self.n_jobs and (trials := self._ask(study, 1)):
                    job, number = self._job(arguments, trials[0]), trials[0].number
                    running[slots.submit(self.launcher.launch, [job], initial_job_idx=number)] = trials[0]
                    alive.add(trials[0])

            fill()
            while running:
                ended, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in ended:
                    trial = running.pop(future)
                    alive.discard(trial)
                    (result,) = future.result()
                    self._tell(study, trial, result)
                    returns.append([result])
                fill()
        return returns

    def _taken(self, study) -> int:
        """The study's trials so far, finished or running (in any worker), as ``n_trials`` counts them."""
        return sum(1 for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(OVER_TOTAL))

    def _ask(self, study, wanted: int) -> list:
        """Up to ``wanted`` new trials, within the study's total. Several workers may ask at the same moment on the
        same count: a trial that turns out to come after the total (the storage orders trials by their id) is told
        FAIL, marked ``afqmc.over_total`` (not counted), and this worker asks no more."""
        from optuna.trial import TrialState

        asked = []
        while len(asked) < wanted and self._taken(study) < self.n_trials:
            trial = study.ask()
            before = sum(1 for t in study.get_trials(deepcopy=False)
                         if t._trial_id < trial._trial_id and not t.user_attrs.get(OVER_TOTAL))  # fmt: skip
            if before >= self.n_trials:
                study._storage.set_trial_user_attr(trial._trial_id, OVER_TOTAL, True)
                study.tell(trial, state=TrialState.FAIL)
                log.info("the study's %d trials are taken (another worker asked the last one)", self.n_trials)
                break
            asked.append(trial)
        return asked

    def _log_best(self, study) -> None:
        """The best value and every trial that reached it: Optuna's ``best_trial`` is the first of a tie, while the
        sweep's best job (named next) breaks ties by the lower dev loss, so a tie is said as one."""
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if not complete:
            return
        tied = [t.number for t in complete if math.isclose(t.value, study.best_value)]
        if len(tied) == 1:
            who = f"trial {tied[0]} with {study.best_params}"
        else:
            who = f"trials {', '.join(map(str, tied))} tie (the best job named below breaks the tie by dev loss)"
        log.info("best %s = %.4f: %s", self.config.trainer.metric, study.best_value, who)

    def _load_study(self):
        """The study in ``storage`` (created if new). A trial still RUNNING is failed only when its search has
        stopped beating (Optuna's heartbeat, see ``beating``): a search killed, not one still running elsewhere
        (a second terminal, a requeued job), whose trials it leaves alone and counts as taken."""
        import optuna

        from afqmc_exp.metrics import GREATER_IS_BETTER
        from afqmc_exp.tracking.store import resolve_uri, store_lock  # a relative sqlite:/// path: where you started

        direction = self.direction or ("maximize" if GREATER_IS_BETTER[self.config.trainer.metric] else "minimize")
        quiet_optuna()
        with store_lock(resolve_uri(self.storage)):  # a new SQLite file's schema, made by one worker at a time
            storage = rdb_storage(resolve_uri(self.storage))
            study = optuna.create_study(study_name=self.study_name, storage=storage, direction=direction,
                                        load_if_exists=True)  # fmt: skip
        optuna.storages.fail_stale_trials(study)
        # Seeded by how far the study is, so a resumed search is reproducible but does not redraw the
        # points its first part already tried (TPE samples at random for its first trials).
        study.sampler = optuna.samplers.TPESampler(seed=self.seed + len(study.trials))
        return study

    def _trial_overrides(self, trial) -> list:
        """What a job needs to report to its trial: where the study is, which trial, and the pruner."""
        if not self.pruner or self.pruner.get("type", "none") == "none":
            return []
        from afqmc_exp.tracking.store import resolve_uri

        pruner = ",".join(f"{k}:{v}" for k, v in self.pruner.items())
        return [f"+optuna.storage='{resolve_uri(self.storage)}'", f"+optuna.study='{self.study_name}'",
                f"+optuna.trial={trial.number}", f"+optuna.pruner={{{pruner}}}"]  # fmt: skip

    @staticmethod
    def _tell(study, trial, result) -> None:
        try:
            AfqmcOptunaSweeper._tell_result(study, trial, result)
        except (RuntimeError, ValueError) as error:  # failed meanwhile by a search that took it for dead
            log.warning("trial %d: its result could not be told (%s)", trial.number, error)

    @staticmethod
    def _tell_result(study, trial, result) -> None:
        """The job's objective; PRUNED when its pruner stopped it; FAIL when it raised or returned NaN (the
        search goes on)."""
        import optuna
        from optuna.trial import TrialState

        if result.status == JobStatus.FAILED and isinstance(result._return_value, optuna.TrialPruned):
            log.info("trial %d pruned: %s", trial.number, result._return_value)
            study.tell(trial, state=TrialState.PRUNED)
            return
        value = result.return_value if result.status == JobStatus.COMPLETED else None
        if value is None or not math.isfinite(float(value)):
            reason = result._return_value if result.status == JobStatus.FAILED else f"objective {value}"
            log.warning("trial %d failed (%s); the search goes on", trial.number, reason)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(value))
