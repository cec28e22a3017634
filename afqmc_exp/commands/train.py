"""The training command (``afqmc-train``, ``python train.py``, ``python -m afqmc_exp train``): Hydra's config
becomes typed objects here, and ``training.run.run`` is called with them.

The configs are the top-level ``conf/`` of a checkout, or the copy of it shipped inside the installed
package (``afqmc_exp/conf`` in the wheel), so an installed package trains like a checkout. The command
line is checked before Hydra runs it (``config_checks``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..data import DataError
from ..run_folder import RunFolder
from ..tracking import store
from ..tracking.masking import Masker, hide_run_config, install_log_filter, mask_uri
from ..tracking.run_tracking import RunTracking, config_digest
from ..tracking.store import first_line
from ..training.signals import Preempted
from .config_checks import ConfigError, validate
from .earlier_run import job_met_again, launched_beside_the_main_process, saved_config
from .moved_targets import upgrade

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # afqmc_exp/
REPO_DIR = PACKAGE_DIR.parent


def config_dir() -> Path:
    """The copy of ``conf/`` inside the installed package (a wheel), else ``conf/`` of the checkout it runs from."""
    packaged = PACKAGE_DIR / "conf"
    return packaged if packaged.is_dir() else REPO_DIR / "conf"


def train_main() -> None:
    """The entry point: the command line is checked, then Hydra runs ``train_from_config``."""
    import hydra

    from .config_checks import check_command_line
    from .continued_sweep import continued_sweep_command

    sys.argv[1:] = continued_sweep_command(sys.argv[1:], config_dir())  # --multirun resume=<sweep>: its own command
    check_command_line(sys.argv[1:], config_dir())
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(train_from_config)()


def find_run_dir(resume: str, tracking) -> Path:
    """``resume`` is a run's output folder, or an MLflow run id whose ``hydra.output_dir`` tag names it (looked up
    without creating a store: a SQLite file that is not there holds no run)."""
    folder = Path(resume).expanduser()
    if not folder.is_dir():
        try:
            folder = Path(store.tags_of_run(tracking.uri, resume)["hydra.output_dir"])
        except (store.RunNotFound, KeyError) as error:
            why = str(error) if isinstance(error, store.RunNotFound) else ""
            raise SystemExit(
                f"error: resume={resume}: neither a run's output folder nor the id of an MLflow run in "
                f"{mask_uri(tracking.uri)}{why}"
            ) from None
    if not RunFolder(folder).config.exists():
        raise SystemExit(f"error: resume={resume}: {folder} has no .hydra/config.yaml; is it a train.py output folder?")
    return folder


def config_of_run(run_id: str, tracking):
    """The config an MLflow run was started with (its ``hydra/config.yaml`` artifact), and the run."""
    import tempfile

    from mlflow.exceptions import MlflowException

    try:
        client = store.client(tracking.uri, create=False)
        with tempfile.TemporaryDirectory() as tmp:
            original = client.get_run(run_id)
            cfg = upgrade(OmegaConf.load(client.download_artifacts(run_id, "hydra/config.yaml", tmp)))
    except store.StoreUnreachable as down:
        raise SystemExit(f"error: rerun={run_id}: {down}") from None
    except (MlflowException, OSError, store.StoreBusy) as err:
        raise SystemExit(
            f"error: rerun={run_id}: no hydra/config.yaml for that run in {mask_uri(tracking.uri)} ({first_line(err)})"
        ) from None
    cfg.rerun = None
    return cfg, original


@dataclass
class Start:
    """Where a training starts from: the command line's config, a killed run's folder (``resume=``) or a logged
    run's config (``rerun=``)."""

    cfg: DictConfig  # the run's own config
    folder: RunFolder
    resume: bool = False
    tags: dict = field(default_factory=dict)  # what a rerun reruns
    run_name: str | None = None  # a rerun: the run's name, marked -rerun


def train_from_config(cfg: DictConfig) -> float:
    """The body of ``train.py``: instantiate every group, then call the typed task.

    With ``resume=...`` the earlier run's own config (its ``.hydra/config.yaml``) is used, so a resumed run
    is the same experiment; it continues in the earlier output folder and MLflow run. With
    ``rerun=<run id>`` the config logged with that MLflow run is started again as a new run. Nothing is written
    into a folder before it is known to be a run folder of this project with a config that is valid; a refused
    command is one line and leaves no folder of its own."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg, masker = HydraConfig.get(), mask_logs(cfg)  # the command line's secrets, masked from the first line
    in_sweep, own_folder = hydra_cfg.mode == RunMode.MULTIRUN, RunFolder(hydra_cfg.runtime.output_dir)
    start = None
    try:
        start = starting_point(cfg, hydra_cfg)
        if start.cfg is not cfg:
            masker = mask_logs(start.cfg)  # from here on: the run's own config, its own secrets
        return _start(start, hydra_cfg, masker)
    except Preempted as stop:  # checkpointed and closed: the job scheduler requeues the job, which continues it
        log.warning("%s: handing the job back to its scheduler, which requeues it", stop.args[0].split(";")[0])
        stop.requeue()
        raise
    except _refused() as err:  # evaluated only when something is raised: the trainer's imports stay lazy
        if in_sweep:  # the sweep records this job as failed and goes on
            raise
        _discard_refused(own_folder, start)
        raise SystemExit(f"error: {masker(str(err))}{_how_to_go_on(err, start)}") from None  # not a traceback
    except SystemExit:
        if not in_sweep:
            _discard_refused(own_folder, start)
        raise


def _how_to_go_on(error: Exception, start: Start | None) -> str:
    """After a full disk: the command that continues the run once there is space."""
    from ..files import NoSpaceLeft

    if isinstance(error, NoSpaceLeft) and start is not None:
        return f": python train.py {start.folder.resume_argument}"
    return ""


def _discard_refused(own_folder: RunFolder, start: Start | None) -> None:
    """A refused command's own folder goes (a resumed run's folder is the run's, and stays)."""
    if start is None or not start.resume or start.folder.root.absolute() != own_folder.root.absolute():
        discard_if_unused(own_folder)


def _start(start: Start, hydra_cfg, masker: Masker) -> float:
    """Check the run's config, then report a finished run or train: nothing is written before the check."""
    from hydra.utils import instantiate

    if start.resume and start.folder.finished:
        return report_finished(start.folder, instantiate(start.cfg.tracking), masker)
    validate(start.cfg)  # before any model is loaded, run opened or line written into a resumed run's folder
    hide_run_config(Path(hydra_cfg.runtime.output_dir), masker)
    return _train(start, hydra_cfg, masker)


def _refused() -> tuple[type[Exception], ...]:
    """The errors that refuse a run in one line (a sweep's job fails with them instead)."""
    from ..files import InUse, NoSpaceLeft
    from ..model import ModelError
    from ..run_folder import RunFolderDamaged
    from ..tracking.mlflow_tracking import TrackingUnavailable
    from ..training.checkpoint import CheckpointDamaged
    from ..training.trainer import NonFiniteLossError

    return (ConfigError, DataError, ModelError, TrackingUnavailable, InUse, CheckpointDamaged, NoSpaceLeft,
            RunFolderDamaged, NonFiniteLossError, store.StoreBusy)  # fmt: skip


def starting_point(cfg: DictConfig, hydra_cfg) -> Start:
    """The run this command trains: ``resume=`` and ``rerun=`` are looked up in the command line's store."""
    from hydra.utils import instantiate

    folder, resume, rerun = RunFolder(hydra_cfg.runtime.output_dir), cfg.get("resume"), cfg.get("rerun")
    if resume and rerun:
        raise SystemExit(
            "error: resume= and rerun= together: resume continues a killed run in its folder, rerun starts a "
            "logged run's config again as a new run; give one of them"
        )
    if not (resume or rerun):  # a sweep's job may meet its own folder again: a requeued job, a continued sweep
        from hydra.types import RunMode

        in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
        return Start(cfg, folder, resume=in_sweep and job_met_again(folder, config_digest(cfg)))
    lookup = instantiate(cfg.tracking)
    if resume:
        earlier = RunFolder(find_run_dir(str(resume), lookup).absolute())
        return Start(saved_config(earlier), earlier, resume=True)  # an old one: mapped
    cfg, tags, run_name = rerun_config(str(rerun), lookup, hydra_cfg, folder)
    return Start(cfg, folder, tags=tags, run_name=run_name)


def rerun_config(run_id: str, tracking, hydra_cfg, folder: RunFolder) -> tuple[DictConfig, dict, str]:
    """A logged run's config, saved as this run's own; the tags and name that say what it reruns."""
    cfg, original = config_of_run(run_id, tracking)
    OmegaConf.save(cfg, folder.config)  # what this run really is
    ignored = [o for o in hydra_cfg.overrides.task if not o.startswith("rerun=")]
    if ignored:
        log.warning("rerun uses the run's own config; ignoring %s", " ".join(ignored))
    tags = {"rerun_of": run_id, "hydra.choices": original.data.tags.get("hydra.choices", "{}")}
    name = f"{original.info.run_name.removesuffix('-rerun')}-rerun"  # its name, marked: told apart in the UI
    log.info("a rerun of MLflow run %s (%s): its logged config, trained again as a new run %s", original.info.run_name,
             run_id, name)  # fmt: skip
    return cfg, tags, name


def discard_if_unused(own: RunFolder) -> None:
    """A run refused before it opened leaves no folder behind (Hydra makes it before the data is read). One that
    another process holds is that process's run, starting, and is left to it."""
    import shutil

    from ..files import InUse, held

    if not own.root.is_dir():
        return
    try:
        with held(own.lock, ""):
            if own.unused():
                shutil.rmtree(own.root, ignore_errors=True)
    except InUse:
        return
    if not own.root.exists():
        for folder in (own.root.parent, own.root.parent.parent):  # outputs/<date>/ when nothing else is there
            if folder == Path.cwd() or any(folder.iterdir()):
                break
            folder.rmdir()


def mask_logs(cfg: DictConfig) -> Masker:
    """The run's secrets, masked from here on in every log line (console and log file)."""
    masker = Masker.from_config(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    install_log_filter(masker)
    return masker


def joined_log(own_folder: Path, masker: Masker):
    """What a resumed run does once its folder is its own (``run``'s ``on_taken``): join the run's log, said there."""

    def join(folder: RunFolder) -> None:
        if folder.root.absolute() != own_folder.absolute():  # in its own folder (a requeued job), Hydra logs there
            append_log_to(folder, masker)
        log.info("resuming %s with its saved config", folder.root)

    return join


def append_log_to(folder: RunFolder, masker: Masker) -> None:
    """A resumed run logs into the run's own log file too (after the earlier processes' lines), so the log
    uploaded with the run tells its whole story. Hydra's own log goes to this process's new folder."""
    root = logging.getLogger()
    hydra_file = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    name = Path(hydra_file.baseFilename).name if hydra_file else folder.log.name
    handler = logging.FileHandler(folder.root / name)
    if hydra_file is not None:
        handler.setFormatter(hydra_file.formatter)
    root.addHandler(handler)
    install_log_filter(masker)


def report_finished(folder: RunFolder, tracking, masker: Masker) -> float:
    """``resume=`` on a run that finished: nothing is trained or rewritten; tracking records its process could
    not deliver (the store was down, or it was killed before closing its MLflow run) are sent now."""
    from ..files import InUse
    from ..training.run import complete_record

    if launched_beside_the_main_process():  # torchrun's other ranks: the main process alone completes the record
        result, pending = folder.read_result(), 0
    else:
        try:
            result, pending = complete_record(folder, tracking, masker)
        except InUse as err:
            raise SystemExit(f"error: {err}") from None
    run_id = result.get("mlflow_run_id")
    behind = f"; {pending} tracking record(s) still wait for the store" if pending else ""
    log.info(
        "%s: this run finished (best dev %s %s at step %s): its results are in that folder and MLflow run %s; "
        "nothing to resume%s",
        folder.root,
        result.get("metric"),
        result.get("best_metric"),
        result.get("best_step"),
        run_id,
        behind,
    )
    return result.get("best_metric")


def _train(start: Start, hydra_cfg, masker: Masker) -> float:
    """The run's config checked, its groups instantiated, and the typed task called with them."""
    from hydra.utils import instantiate

    from ..training.pruning import trial_reporter
    from ..training.recipe import Recipe
    from ..training.run import run

    cfg, folder = start.cfg, start.folder
    recipe = Recipe(
        data=instantiate(cfg.data), load_model=instantiate(cfg.model), make_optimizer=instantiate(cfg.optim),
        make_scheduler=instantiate(cfg.scheduler), trainer=instantiate(cfg.trainer), seed=cfg.seed,
        regularizer=instantiate(cfg.regularizer),
    )  # fmt: skip
    tracked = RunTracking.for_job(cfg, hydra_cfg, folder, masker, resumed=start.resume, run_name=start.run_name,
                                  tags=start.tags)  # fmt: skip
    optuna = OmegaConf.to_container(cfg.optuna) if cfg.get("optuna") else None  # a trial of a search (pruning)
    on_evaluate = trial_reporter(optuna, recipe.trainer.metric) if optuna else None
    if not start.resume:  # what this run is, kept beside it: Hydra rewrites .hydra/ when a sweep's job meets it again
        folder.save_config_digest(config_digest(cfg))
    on_taken = joined_log(Path(hydra_cfg.runtime.output_dir), masker) if start.resume else None
    return run(recipe, tracked, folder, resume=start.resume, on_evaluate=on_evaluate, on_taken=on_taken)


class GpuPerParallelJob(Callback):
    """Hydra callback: a sweep's job run side by side with others on one machine (``hydra/launcher=joblib``) trains
    on a GPU of its own (``training.hardware.pin_parallel_job``), chosen in its process before anything uses CUDA."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.types import RunMode

        hydra = config.hydra
        if hydra.mode == RunMode.MULTIRUN and hydra.runtime.choices.get("hydra/launcher") == "joblib":
            from ..training.hardware import pin_parallel_job

            pin_parallel_job(hydra.job.num)
