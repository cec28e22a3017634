"""A sweep that stopped (a killed terminal, a crashed node, a cluster's time limit), continued where it stopped:
``python train.py --multirun resume=<the sweep's folder, or its MLflow parent run id>``.

* :func:`continued_sweep_command` turns that command line, before Hydra reads it, into the sweep's own: the overrides
  saved in its folder (see the guard below), in that same folder (``hydra.sweep.dir``). A grid then lists the same
  jobs in the same order, so job ``N`` meets its own folder ``N`` again; an Optuna search reloads its study from its
  storage. Beside ``resume=`` the command line may change only where the jobs run and record (``may_change``: the
  store's URI, the launcher); anything else would make another sweep, and is refused in one line.
* Each job that meets its folder again (``earlier_run.job_met_again``) is reported if it finished (not trained, its
  MLflow run untouched) and continued if it stopped (killed or failed: its own MLflow run, from its last
  checkpoint); a folder holding the run of another config is refused, untouched; the others train. The sweep's
  MLflow parent is reopened (``tracking.sweep``) and closed over every job.
* :class:`SweepFolderGuard` (a Hydra callback, registered in ``conf/train.yaml``) refuses a sweep started in a folder
  that holds *another* sweep (a fixed ``hydra.sweep.dir`` given again with other values), before Hydra writes
  anything there: otherwise that sweep's finished jobs would be reported as this one's.
* The guard keeps each start's overrides whole (``sweep_overrides.json``, replaced in one rename) before the sweeper
  rewrites ``multirun.yaml`` in place: a kill then can cut that file inside its task list, leaving valid YAML with
  fewer overrides, and the sweep continued from it would be a smaller grid. Where only a ``multirun.yaml`` is there
  (a sweep started by an earlier version), one that cannot be read is one line with the way on, for both
  (:func:`saved_overrides`), never a traceback: Hydra swallows a callback's error, and the other sweep would run.

Two continuations of one sweep started at once write no job folder twice: each is held by one process at a time
(its run lock), so the second meets a job the first is training as a job that fails, and writes nothing into it.
That second sweep then stops (Hydra's basic sweeper stops at a failed job) and closes the parent FAILED while the
first still runs; the first closes it again, FINISHED, when it ends.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..sweep_folder import SweepFolder

log = logging.getLogger(__name__)
MULTIRUN_FLAGS = ("-m", "--multirun")


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def may_change(override: str) -> bool:
    """Whether an override may differ when a sweep is continued: where its jobs record and run, not what they are."""
    key = key_of(override)
    return key in ("tracking.uri", "hydra/launcher") or key.startswith("hydra.launcher.")


def continued_sweep_command(argv: Sequence[str], conf_dir: Path) -> list[str]:
    """``argv`` itself, unless it is ``--multirun resume=<sweep>``: then the sweep's own overrides in its folder."""
    argv = list(argv)
    target = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if target is None or not set(MULTIRUN_FLAGS) & set(argv):
        return argv
    given = [a for a in argv if a not in MULTIRUN_FLAGS and not a.startswith("resume=")]
    flags, changes = [a for a in given if a.startswith("-")], [a for a in given if not a.startswith("-")]
    refused = [o for o in changes if not may_change(o)]
    if refused:
        raise SystemExit(f"error: --multirun resume={target} continues a sweep with its own overrides; {refused[0]} "
                         "would make it another sweep. Beside resume= give only tracking.uri or the launcher "
                         "(hydra/launcher, hydra.launcher.*), or start a new sweep without resume=")  # fmt: skip
    sweep_dir = sweep_folder(target, changes, conf_dir)
    saved = saved_overrides(SweepFolder(sweep_dir))
    changed = {key_of(o) for o in changes}
    launcher_changed = "hydra/launcher" in changed

    def kept(override: str) -> bool:
        key = key_of(override)
        return not (key in changed or key in ("hydra.mode", "hydra.sweep.dir")
                    or (launcher_changed and key.startswith("hydra.launcher.")))  # fmt: skip

    print(f"continuing the sweep in {sweep_dir}: jobs that finished are reported, not trained again; killed ones "
          "continue from their last checkpoint", file=sys.stderr)  # fmt: skip
    own = [o for o in [*saved.hydra, *saved.task] if kept(o)]
    return [*flags, "--multirun", *own, f"hydra.sweep.dir={sweep_dir}", *changes]


def sweep_folder(target: str, changes: list[str], conf_dir: Path) -> Path:
    """The folder of the sweep ``target`` names: the folder itself, or the ``sweep.dir`` tag of the MLflow parent
    run with that id (in the store ``tracking.uri`` names, else the config's default store)."""
    folder = Path(target).expanduser()
    if SweepFolder(folder).holds_a_sweep():
        return folder.absolute()
    if folder.is_dir():
        from ..run_folder import RunFolder

        if RunFolder(folder).config.exists():
            raise SystemExit(f"error: resume={target} is one run's folder, not a sweep's: continue that run without "
                             f"--multirun (python train.py resume={target}), or give its sweep's folder, "
                             f"{folder.absolute().parent}")  # fmt: skip
        raise SystemExit(f"error: resume={target}: no {SweepFolder(folder).saved_config.name} there, so no sweep to "
                         "continue; give the folder a "
                         "sweep started (outputs/multirun/<date>/<time>) or its MLflow parent run id")  # fmt: skip
    return folder_of_parent_run(target, changes, conf_dir)


def folder_of_parent_run(run_id: str, changes: list[str], conf_dir: Path) -> Path:
    from hydra.utils import instantiate

    from ..tracking import store
    from ..tracking.masking import mask_uri
    from .config_checks import _compose

    cfg, _ = _compose(conf_dir, "train", [o for o in changes if key_of(o) == "tracking.uri"])
    uri = instantiate(cfg.tracking).uri if isinstance(cfg, DictConfig) else store.default_uri()
    try:
        tags = store.tags_of_run(uri, run_id)
    except store.RunNotFound as why:
        raise SystemExit(f"error: resume={run_id}: neither a sweep's folder nor the id of an MLflow run in "
                         f"{mask_uri(uri)}{why}") from None  # fmt: skip
    folder = SweepFolder(tags.get("sweep.dir", ""))
    if "sweep.dir" not in tags or not folder.holds_a_sweep():
        where = f" ({folder.root} has no {folder.saved_config.name})" if "sweep.dir" in tags else ""
        raise SystemExit(f"error: resume={run_id}: not the parent run of a sweep whose folder is here{where}; give "
                         "the sweep's folder")  # fmt: skip
    holder = folder.parent_run_id()
    if holder not in (None, run_id):  # that folder deleted, and another sweep started at the same path
        raise SystemExit(f"error: resume={run_id}: its folder {folder.root} holds another sweep now (parent run "
                         f"{holder}); continue that one with resume={folder.root}, if it is the one you "
                         "mean")  # fmt: skip
    return folder.root


def saved_overrides(folder: SweepFolder) -> DictConfig:
    """The overrides a sweep was last started with: those :class:`SweepFolderGuard` kept whole as it started
    (``sweep_overrides.json``), else (a sweep started by an earlier version) its ``multirun.yaml``, which Hydra
    rewrites in place, so that a kill then can leave it cut. One that cannot be read is one line with the way on."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    from ..tracking.store import first_line

    kept = folder.overrides_file.is_file()
    source = folder.overrides_file if kept else folder.saved_config
    try:
        if kept:
            overrides = OmegaConf.create(json.loads(source.read_text(encoding="utf-8")))
        else:
            overrides = OmegaConf.load(source).hydra.overrides
        if not {"hydra", "task"} <= set(overrides):
            raise ValueError("its overrides are cut short")
    except (OSError, ValueError, AttributeError, yaml.YAMLError, OmegaConfBaseException) as error:  # hydra: null too
        how = "edited since?" if kept else "a kill while Hydra rewrote it?"
        raise SystemExit(f"error: {source} cannot be read ({first_line(error)}); {how} Move it aside, then run the "
                         f"sweep's own command again with hydra.sweep.dir={folder.root}: its finished jobs are "
                         "reported, killed ones continue") from None  # fmt: skip
    return overrides


class SweepFolderGuard(Callback):
    """Hydra callback: a sweep started in a folder that holds another sweep is refused (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        folder = SweepFolder(Path(str(config.hydra.sweep.dir)).absolute())
        if folder.holds_a_sweep():
            self._refuse_another_sweep(folder, config)
        folder.save_overrides(list(config.hydra.overrides.hydra), list(config.hydra.overrides.task))

    @staticmethod
    def _refuse_another_sweep(folder: SweepFolder, config: DictConfig) -> None:
        sweep_dir = folder.root
        before = [o for o in saved_overrides(folder).task if not may_change(o)]
        now = [o for o in config.hydra.overrides.task if not may_change(o)]
        if before != now:
            there, here = [o for o in before if o not in now], [o for o in now if o not in before]
            differs = f"{' '.join(there) or '(no override)'} there, {' '.join(here) or '(no override)'} here"
            if not (there or here):
                differs = "its overrides in another order, which numbers its jobs otherwise"
            raise SystemExit(f"error: hydra.sweep.dir={sweep_dir}: holds another sweep ({differs}); nothing was "
                             "written there: give a new hydra.sweep.dir, or continue that sweep with python train.py "
                             f"--multirun resume={sweep_dir}")  # fmt: skip
        log.info("%s holds this same sweep: jobs that finished are reported, not trained again; killed ones continue "
                 "from their last checkpoint", sweep_dir)  # fmt: skip
