"""A folder that already holds a run, met again by the train command: a requeued job or a script with a fixed
``hydra.run.dir``, or ``resume=`` naming a folder that may not be this project's.

Hydra writes into a run's folder before the task starts (``.hydra/*.yaml``, ``train.log``), so the decision is
taken earlier, by :class:`RunFolderGuard` (a Hydra callback registered in ``conf/train.yaml``, run when a single
run starts), before anything is written:

* the folder of a **finished** run is never written again: refused in one line (a new folder, ``rerun=``,
  ``resume=``);
* the folder of a **killed** run, met by the same command (the config it saved), is continued as ``resume=``
  would continue it: the same MLflow run, from its last checkpoint, never a second run left RUNNING beside it;
  another command is refused, with ``resume=`` named;
* the folder of **another program's** Hydra run is refused;
* a folder that another process is running a run in (the same fixed folder started twice), from that command's
  first moment to its end, is refused before anything is written there: the guard takes the folder's lock for its
  process (``files.take``) before Hydra writes into it, and lets it go when the run ends, so a second command never
  rewrites the first one's config, nor deletes its folder when it is refused itself (``discard_if_unused``);
* in every one of these Hydra is told not to save its config files there (``hydra.output_subdir``), so the run's
  own saved config, which ``resume=`` reads, stays the one it started with;
* with several processes (torchrun, ``accelerate launch``) only the main one judges the folder and writes Hydra's
  files there: another would read them half-written. Its decision (the folder, whether to resume) reaches the others
  with its folder (``training.run.as_the_main_process_has``).

:func:`saved_config` reads a folder's saved config for ``resume=`` with the same care: a file that is not YAML, or
not an afqmc-exp config, is one line, and nothing is written into that folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ..files import InUse, let_go, take
from ..run_folder import RunFolder, RunFolderDamaged
from ..tracking.run_tracking import flatten
from .moved_targets import upgrade

log = logging.getLogger(__name__)


def state_of(folder: RunFolder) -> str:
    """``new`` (nothing of a run there), ``foreign`` (another program's Hydra run), ``finished`` or ``killed``."""
    if folder.config.exists() and folder.saved_config_problem():
        return "foreign"
    if folder.finished:
        return "finished"
    return "killed" if folder.holds_a_run else "new"


def saved_config(folder: RunFolder, key: str = "resume") -> DictConfig:
    """The config a run folder's run was started with, brought to today's shape, or one line saying why not."""
    problem = folder.saved_config_problem()
    if problem:
        raise SystemExit(f"error: {key}={folder.root}: its {folder.config} is no run config of afqmc-exp: {problem}; "
                         "nothing was written there")  # fmt: skip
    return upgrade(OmegaConf.load(folder.config))


def differing_key(saved: DictConfig, given: DictConfig) -> str | None:
    """The first setting whose value differs between two configs (secrets masked), as ``key: a there, b here``."""
    before = flatten(OmegaConf.to_container(saved, resolve=False))
    after = flatten(OmegaConf.to_container(given, resolve=False))
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            return f"{key}: {before.get(key, '(none)')} there, {after.get(key, '(none)')} here"
    return None


class RunFolderGuard(Callback):
    """Hydra callback: a single run started in a folder that already holds one (see the module docstring)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if launched_beside_the_main_process():  # torchrun, accelerate launch: the main process alone judges the
            with read_write(config.hydra):  # folder (the others read it as it writes it) and writes Hydra's files;
                config.hydra.output_subdir = None  # its decisions reach them with its folder (training.run)
            return
        folder = RunFolder(Path(str(config.hydra.run.dir)).absolute())
        where = f"error: hydra.run.dir={folder.root}"
        if folder.lock.exists():  # a run of ours is or was there: first whether another process runs it (its files
            _take(folder, where)  # may be half-written), before they are read
        state = state_of(folder)
        if state == "new":
            _take(folder, where)
            return
        with read_write(config.hydra):
            config.hydra.output_subdir = None  # the run's own saved config is kept as it is
        resume = config.get("resume")
        if resume and Path(str(resume)).expanduser().absolute() == folder.root:
            return  # resume= of this very folder: the train command continues (or reports) it
        if state == "foreign":
            raise SystemExit(f"{where}: holds another program's run ({folder.saved_config_problem()}); nothing was "
                             "written there: give a new hydra.run.dir, or leave it out")  # fmt: skip
        if state == "finished":
            raise SystemExit(f"{where}: holds a finished run{_result_of(folder)}, which is never written again: leave "
                             "hydra.run.dir out (or give a new one) to train again, rerun=<its run id> to start its "
                             f"config again as a new run, {folder.resume_argument} to see its result")  # fmt: skip
        self._continue_killed(config, folder, where)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        let_go(RunFolder(Path(str(config.hydra.run.dir)).absolute()).lock)

    @staticmethod
    def _continue_killed(config: DictConfig, folder: RunFolder, where: str) -> None:
        run = f"run {folder.run_id()}" if folder.run_id() else "a run"
        given = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        differs = "resume= or rerun= given" if config.get("resume") or config.get("rerun") else \
            differing_key(saved_config(folder, "hydra.run.dir"), given)  # fmt: skip
        if differs:
            raise SystemExit(f"{where}: holds {run}, killed before it finished, started otherwise ({differs}); "
                             f"continue it with {folder.resume_argument}, or give a new hydra.run.dir")  # fmt: skip
        log.info("%s holds %s, killed before it finished, started with this same config: continuing it, as %s does",
                 folder.root, run, folder.resume_argument)  # fmt: skip
        _take(folder, where)  # one killed before it took its lock has none yet
        with read_write(config), open_dict(config):
            config.resume = str(folder.root)


def _take(folder: RunFolder, where: str) -> None:
    """The folder this process's run's from now on (see the module docstring), or one line if another's is there."""
    try:
        take(folder.lock, "")
    except InUse:
        raise SystemExit(f"{where}: another process is running a run in this folder (the same command started "
                         "twice?); nothing was written there: give a new hydra.run.dir, or wait for it to "
                         "end") from None  # fmt: skip


def job_met_again(folder: RunFolder, digest: str) -> bool:
    """Whether a sweep's job meets its own folder holding its run (a job requeued by its scheduler after a
    preemption, or a continued sweep, ``commands/continued_sweep``): then it continues that run (stopped, killed
    or failed), or reports it if it finished, and is never started afresh over it. Hydra has already rewritten the
    folder's ``.hydra/`` with this job's config, so what the run is was kept as it started (``config_digest``): a
    run of another config there (another search's trial in a reused ``hydra.sweep.dir``) is refused, untouched."""
    if not folder.holds_a_run:
        return False
    started = folder.config_digest()
    if started is not None and started != digest:
        from .config_checks import ConfigError

        raise ConfigError(f"{folder.root} holds the run of another config (a job of another sweep or search): it is "
                          "left as it is; give this sweep a new hydra.sweep.dir")  # fmt: skip
    if folder.finished:
        log.info("%s holds this job's run, finished%s: reported, not trained again", folder.root, _result_of(folder))
    else:
        log.info("%s holds this job's run (%s), stopped before it finished: continuing it from its last checkpoint",
                 folder.root, f"MLflow run {folder.run_id()}" if folder.run_id() else "not tracked")  # fmt: skip
    return True


def launched_beside_the_main_process() -> bool:
    """Whether this process is one of several a launcher started (torchrun and ``accelerate launch`` set ``RANK``)
    and not the main one."""
    return os.environ.get("RANK", "0") != "0"


def _result_of(folder: RunFolder) -> str:
    """`` (best dev accuracy 0.5000 at step 4, MLflow run abc)``, or nothing when result.json cannot be read."""
    try:
        result = folder.read_result()
    except RunFolderDamaged:
        return ""
    best = result.get("best_metric")
    shown = f"{best:.4f}" if isinstance(best, (int, float)) else best
    return (f" (best dev {result.get('metric')} {shown} at step {result.get('best_step')}, MLflow run "
            f"{result.get('mlflow_run_id')})")  # fmt: skip
