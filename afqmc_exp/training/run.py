"""One training run as a plain typed function: validate data, open the MLflow run, fit, score the best
weights again, log everything, close the run with the right status.

It never sees a DictConfig (Hydra stays in ``commands.train``), so it can be called from a notebook or a test with
ordinary objects. The order matters: data is read and checked *before* the MLflow run opens or a model
loads (a bad line costs a second and leaves no half-open run); once the run is open, any exception
closes it as FAILED and Ctrl-C as KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data import CheckedFile, DataError, PairData, Split
from ..model import Pretrained, prepare_for_device
from ..run_folder import RunFolder
from ..tracking.config import MlflowTracking
from ..tracking.masking import Masker
from ..tracking.mlflow_run import NoRun, Run, dataset_records
from ..tracking.system_metrics import SystemMetrics
from .checkpoint import has_last_checkpoint
from .hardware import build_accelerator, seconds_since_start, system_tags
from .outputs import RunOutputs, log_log_files
from .pruning import is_pruned
from .trainer import FitResult, Trainer, TrainerConfig

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices) RNGs; the data order is seeded separately by the sampler."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Recipe:
    """What is trained, and how: the objects Hydra builds from the config groups."""

    data: PairData
    load_model: Callable[..., Pretrained]  # labels= -> the pretrained model with a head of that many outputs
    make_optimizer: Callable
    make_scheduler: Callable
    trainer: TrainerConfig
    seed: int
    regularizer: Callable | None = None  # one slice's forward and backward passes (see regularizers)


@dataclass
class RunTracking:
    """How the run is tracked: the store's settings, and what its MLflow run is opened with."""

    tracking: MlflowTracking
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None  # a sweep's parent run
    masker: Masker | None = None  # the run's secrets, hidden in what is uploaded (see masking)


def run(recipe: Recipe, tracked: RunTracking, output_dir: Path, *, resume: bool = False,
        on_evaluate: Callable[[int, float], None] | None = None) -> float:  # fmt: skip
    """Train, evaluate, track; return the best dev value of ``trainer.metric`` (what sweepers optimise).

    ``resume=True``: ``output_dir`` is an earlier run's folder; training continues from its last checkpoint
    (or from the start if it had none) inside the same MLflow run. ``on_evaluate(step, dev metric)`` is
    called after each evaluation (an Optuna trial's pruning)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    checked, startup = checked_data(recipe.data, recipe.trainer.metric)  # every line checked before anything heavy
    seed_everything(recipe.seed)
    accelerator = build_accelerator(recipe.trainer.device, recipe.trainer.mixed_precision, recipe.trainer.tf32)
    recipe = for_device(recipe, accelerator.device)  # the "auto" settings, decided once
    output_dir, resume = shared_start(Path(output_dir), resume, accelerator)
    log.info("run folder: %s", output_dir)
    for line in recipe.data.summary(checked):
        log.info("%s", line)
    datasets = [] if resume else dataset_records(recipe.data.name, checked)  # a resumed run logged them already
    hardware = system_tags(accelerator, eval_bf16=recipe.trainer.eval_precision == "bf16")
    startup["startup_data_s"] = seconds_since_start()
    tracked = replace(tracked, tags={**tracked.tags, **hardware})
    with (
        run_folder_lock(output_dir, accelerator),
        opened_run(tracked, output_dir, resume, accelerator, datasets) as mlflow_run,
    ):
        startup["startup_tracking_s"] = seconds_since_start()
        pretrained, splits = load_for_training(recipe, accelerator.device.type, checked, startup)
        startup["startup_model_s"] = seconds_since_start()
        result = Trainer(
            pretrained=pretrained, data=recipe.data, splits=splits, make_optimizer=recipe.make_optimizer,
            make_scheduler=recipe.make_scheduler, config=recipe.trainer, seed=recipe.seed, output_dir=output_dir,
            accelerator=accelerator, log_metrics=mlflow_run.log_metrics, flush_metrics=mlflow_run.flush,
            regularizer=recipe.regularizer, on_evaluate=on_evaluate,
        ).fit(resume=resume and has_checkpoint_to_resume(output_dir, mlflow_run))  # fmt: skip
        result.speed.update(startup)
        RunOutputs(output_dir, mlflow_run, tracked.tracking, accelerator).finish(result, splits, recipe.data,
                                                                                 recipe.trainer)  # fmt: skip
    return result.best_metric


def for_device(recipe: Recipe, device: torch.device) -> Recipe:
    """The recipe with the data's and the trainer's ``auto`` settings decided for ``device``."""
    return replace(recipe, data=recipe.data.for_device(device.type), trainer=recipe.trainer.for_device(device))


def checked_data(data: PairData, metric: str) -> tuple[dict[str, CheckedFile], dict[str, float]]:
    """Every file of the task checked (or its check read from the cache), and how long that took."""
    started = time.perf_counter()
    checked = data.check()
    check_dev_labels(checked["dev"], metric, data.labels)
    return checked, {"data_check_s": time.perf_counter() - started}  # where the wait before the first step goes


def has_checkpoint_to_resume(output_dir: Path, mlflow_run: Run | NoRun) -> bool:
    """Whether a resumed run has a last checkpoint; one killed before its first checkpoint (or whose checkpoint
    was moved aside) starts again from step 0 in the same run, said, not silent."""
    if has_last_checkpoint(output_dir):
        return True
    log.warning("%s has no last checkpoint: training starts again from step 0, in the same run", output_dir)
    mlflow_run.set_tags({"resume.restarted_from_step_0": "true"})
    return False


def load_for_training(recipe: Recipe, device_type: str, checked: dict[str, CheckedFile],
                      startup: dict[str, float]) -> tuple[Pretrained, dict[str, Split]]:  # fmt: skip
    """The model with one output per label, prepared for the device, and every split tokenized with its
    tokenizer (from the token cache after the first run on these files; ``startup`` gets how long that took)."""
    data = recipe.data
    pretrained = prepare_for_device(recipe.load_model(labels=data.labels), device_type)
    check_max_length(data.max_length, pretrained)
    started = time.perf_counter()
    splits = data.tokenize(pretrained.tokenizer, checked)
    startup["data_tokenize_s"] = time.perf_counter() - started
    return pretrained, splits


class RunInProgress(RuntimeError):
    """Another process holds the run folder (e.g. a job requeued twice resuming the same run)."""


@contextlib.contextmanager
def run_folder_lock(output_dir: Path, accelerator=None):
    """One process per run folder for the run's whole life; a second one is refused before it touches anything.
    The lock is the operating system's (``flock``): a killed process releases it. Without ``accelerator``:
    a single process (completing a finished run's record)."""
    if accelerator is not None and not accelerator.is_main_process:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(RunFolder(output_dir).lock, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunInProgress(
            f"{output_dir}: another process is running this run (a resume started twice?); "
            "wait for it to end, or stop it, then resume"
        ) from None
    try:
        yield
    finally:
        lock.release()


def check_dev_labels(dev: CheckedFile, metric: str, labels: list[str]) -> None:
    """AUC needs both classes; with one, it is undefined, and as the metric it could pick no best weights."""
    absent = [name for name, count in zip(labels, dev.stats.label_counts, strict=True) if not count]
    if not absent:
        return
    if metric == "auc":
        raise DataError(
            f"{dev.path}: the dev set holds no pair labelled {absent[0]!r}: AUC is undefined on it, so "
            "trainer.metric=auc cannot pick the best weights; use a dev set with both labels or another trainer.metric"
        )
    log.warning("the dev set holds no pair labelled %s: %s", ", ".join(map(repr, absent)),
                "dev AUC is undefined (logged as NaN, null in result.json)" if len(labels) == 2
                else "macro-F1 counts them only where they are predicted (with F1 0)")  # fmt: skip


def shared_start(output_dir: Path, resume: bool, accelerator) -> tuple[Path, bool]:
    """With several processes, every one writes and reads the main process's folder, and resumes when it does (the
    main process alone judged a folder met again: ``commands.earlier_run``)."""
    if accelerator.num_processes == 1:
        return output_dir, resume
    from accelerate.utils import broadcast_object_list

    folder, resumed = broadcast_object_list([str(output_dir), resume])
    return Path(folder), resumed


@contextlib.contextmanager
def closed_with_status(mlflow_run: Run, output_dir: Path, accelerator, system_metrics_seconds: float | None = None):
    """Close the run FINISHED, KILLED on Ctrl-C/SIGTERM, FAILED on any other exception, with its logs."""
    status, sampler = "FAILED", None
    if mlflow_run.active and system_metrics_seconds:  # the MLflow UI's System metrics tab
        first = max((s for k, s in mlflow_run.logged_through.items() if k.startswith("system/")), default=-1) + 1
        sampler = SystemMetrics(mlflow_run.log_metrics, system_metrics_seconds, first).start()
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception as error:  # (any failure closes the run FAILED, and is raised again)
        if is_pruned(error):  # an Optuna search stopped this trial early: not a failure
            status = "KILLED"
            mlflow_run.set_tags({"optuna.state": "PRUNED", "optuna.pruned": str(error)})
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        if accelerator.is_main_process:
            log_log_files(mlflow_run, output_dir)
        mlflow_run.end(status)
        if accelerator.num_processes > 1:
            accelerator.end_training()  # destroys the process group: exiting with it alive can abort (SIGABRT)


@contextlib.contextmanager
def opened_run(tracked: RunTracking, output_dir: Path, resume: bool, accelerator, datasets: list[dict]):
    """The run's MLflow run (a :class:`NoRun` where nothing is tracked), open for the block and closed with the
    block's outcome as its status."""
    mlflow_run = open_mlflow_run(tracked, output_dir, resume, accelerator)
    if datasets:
        mlflow_run.log_datasets(datasets)
    with closed_with_status(mlflow_run, output_dir, accelerator, tracked.tracking.system_metrics_seconds):
        yield mlflow_run


def open_mlflow_run(tracked: RunTracking, output_dir: Path, resume: bool, accelerator) -> Run | NoRun:
    """The main process opens (or, resuming, reopens) the run; the others log nowhere."""
    folder, tracking = RunFolder(output_dir), tracked.tracking
    if not accelerator.is_main_process:
        return NoRun()
    if resume and folder.run_id():
        return tracking.reopen(folder.run_id(), output_dir, tracked.masker)
    mlflow_run = tracking.start(tracked.params, tracked.tags, output_dir, parent_run_id=tracked.parent_run_id,
                                masker=tracked.masker)  # fmt: skip
    folder.save_run_id(mlflow_run.run_id)
    return mlflow_run


def check_max_length(max_length: int, pretrained: Pretrained) -> None:
    if max_length > pretrained.max_positions:
        raise ValueError(
            f"data.max_length={max_length}: the model takes at most {pretrained.max_positions} "
            f"positions; set data.max_length<={pretrained.max_positions}"
        )


def complete_record(output_dir: Path, tracking: MlflowTracking, masker: Masker) -> tuple[dict, int]:
    """``resume=`` on a run that finished on disk: its result.json and MLflow run id, and how many tracking
    records still wait for the store.

    What its process journaled is delivered. If it was killed after writing result.json but before its MLflow
    run was closed, the finish is recorded from the run folder (what the journal already holds is not queued
    again) and the run closed FINISHED; nothing in the folder is rewritten."""
    output_dir = output_dir.absolute()  # as the run's own process wrote its paths into the journal
    saved = RunFolder(output_dir).read_result()
    run_id = saved.get("mlflow_run_id")
    with run_folder_lock(output_dir):  # not while a process still delivers (or completes) this run
        mlflow_run = tracking.attach(run_id, output_dir, masker) if run_id else NoRun()
        if mlflow_run.active and not mlflow_run.ended:
            log.info("%s finished, but its MLflow run %s was never closed: recording its finish from the folder",
                     output_dir, run_id)  # fmt: skip
            result = FitResult(saved["best_metric"], saved["best_step"], RunFolder(output_dir).best_model,
                               saved["steps"], saved.get("speed", {}), saved.get("pairs_seen", 0))  # fmt: skip
            final = {k: math.nan if v is None else v for k, v in saved.items() if k.startswith("final/")}  # null: NaN
            mlflow_run.completing = True
            RunOutputs(output_dir, mlflow_run, tracking).record_finish(result, final, saved["metric"])
            log_log_files(mlflow_run, output_dir)
            mlflow_run.end("FINISHED")
        elif mlflow_run.active:
            mlflow_run.outbox.start()
            mlflow_run.outbox.drain(tracking.drain_seconds)
    return saved, mlflow_run.outbox.pending if mlflow_run.active else 0
