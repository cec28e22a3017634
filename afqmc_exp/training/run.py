"""One training run as a plain typed function: validate data, open the MLflow run, fit, score the best
weights again, log everything, close the run with the right status; and a finished run's record completed from its
folder (:func:`complete_record`, for a run killed after its ``result.json`` but before its MLflow run closed).

It never sees a DictConfig (Hydra stays in ``commands.train``), so it can be called from a notebook or a test with
ordinary objects. The order matters: data is read and checked *before* the MLflow run opens or a model
loads (a bad line costs a second and leaves no half-open run); once the run is open, any exception
closes it as FAILED and Ctrl-C as KILLED.

Both take the run folder first (:func:`taken`): one process per run folder for the run's whole life, and any save a
kill cut between its two renames put right before anything reads the folder, so no reader of the best weights or the
last checkpoint has to.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch

from ..data import CheckedFile, DataError, PairData, Split
from ..files import InUse, held, recover
from ..model import Pretrained, prepare_for_device
from ..run_folder import RunFolder
from ..tracking.masking import Masker
from ..tracking.mlflow_run import NoRun, Run, dataset_records
from ..tracking.mlflow_tracking import MlflowTracking
from ..tracking.run_tracking import RunTracking
from ..tracking.system_metrics import SystemMetrics
from .checkpoint import Checkpointer
from .hardware import build_accelerator, seconds_since_start, system_tags
from .outputs import RunOutputs
from .pruning import is_pruned
from .recipe import Recipe
from .trainer import FitResult, Trainer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices) RNGs; the data order is seeded separately by the sampler."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(recipe: Recipe, tracked: RunTracking, folder: RunFolder, *, resume: bool = False,
        on_evaluate: Callable[[int, float], None] | None = None,
        on_taken: Callable[[RunFolder], None] | None = None) -> float:  # fmt: skip
    """Train, evaluate, track; return the best dev value of ``trainer.metric`` (what sweepers optimise).

    ``tracked`` says how the run is recorded (``RunTracking.for_job``); it keeps its MLflow run's id and outbox
    journal in ``folder`` too. ``resume=True``: ``folder`` is an earlier run's folder; training continues from its
    last checkpoint (or from the start if it had none) inside the same MLflow run. ``on_evaluate(step, dev metric)``
    is called after each evaluation (an Optuna trial's pruning); ``on_taken(folder)`` once the folder is this run's,
    before anything is logged or written there (a resumed run's log joining its folder's)."""
    folder.root.mkdir(parents=True, exist_ok=True)
    checked, startup = checked_data(recipe.data, recipe.trainer.metric)  # every line checked before anything heavy
    seed_everything(recipe.seed)
    accelerator = build_accelerator(recipe.trainer.device, recipe.trainer.mixed_precision, recipe.trainer.tf32)
    recipe = recipe.for_device(accelerator.device)  # the "auto" settings, decided once
    folder = as_the_main_process_has(folder, accelerator)  # every process writes and reads the main one's folder,
    resume = as_the_main_process_has(resume, accelerator)  # and resumes when it does (it alone judged the folder)
    with contextlib.ExitStack() as the_run:
        the_run.enter_context(taken(folder, accelerator))
        if on_taken is not None:
            on_taken(folder)
        log.info("run folder: %s", folder.root)
        for line in recipe.data.summary(checked):
            log.info("%s", line)
        datasets = [] if resume else dataset_records(recipe.data.name, checked)  # a resumed run logged them already
        hardware = system_tags(accelerator, eval_bf16=recipe.trainer.eval_precision == "bf16")
        startup["startup_data_s"] = seconds_since_start()
        tracked = tracked.with_tags(hardware)
        mlflow_run = the_run.enter_context(opened_run(tracked, resume, accelerator, datasets))
        startup["startup_tracking_s"] = seconds_since_start()
        pretrained, splits = load_for_training(recipe, accelerator.device.type, checked, startup)
        startup["startup_model_s"] = seconds_since_start()
        outputs = RunOutputs(folder, mlflow_run, tracked.tracking, accelerator)
        checkpointer = Checkpointer.of_run(folder, recipe.trainer, accelerator, before_save=mlflow_run.flush)
        result = Trainer(
            recipe=recipe, pretrained=pretrained, splits=splits, accelerator=accelerator, checkpointer=checkpointer,
            best=outputs.best_weights(pretrained, recipe), metrics=mlflow_run,
            profiling=outputs.profiling(recipe.trainer), on_evaluate=on_evaluate,
        ).fit(resume=resume and has_checkpoint_to_resume(checkpointer, mlflow_run))  # fmt: skip
        result.speed.update(startup)
        outputs.finish(result, splits, recipe.data, recipe.trainer)
        if accelerator.is_main_process and not recipe.trainer.keep_last_checkpoint:
            checkpointer.remove()  # a finished run needs no resume state
    return result.best_metric


def checked_data(data: PairData, metric: str) -> tuple[dict[str, CheckedFile], dict[str, float]]:
    """Every file of the task checked (or its check read from the cache), and how long that took."""
    started = time.perf_counter()
    checked = data.check()
    check_dev_labels(checked["dev"], metric, data.labels)
    return checked, {"data_check_s": time.perf_counter() - started}  # where the wait before the first step goes


@contextlib.contextmanager
def taken(folder: RunFolder, accelerator=None):
    """The run folder, this run's alone for the block: a second process (a resume started twice, a job requeued
    twice) is refused before it writes the run's outputs or MLflow records (``files.held``), and a swap a kill
    interrupted is put right first (``files.recover``). Without ``accelerator``: a single process (completing a
    finished run's record).

    With several processes the main one takes the folder and tells the others whether it could: a refusal ends
    every process with the same line, not the main one alone, which would leave the others at their next collective
    (a lost peer under gloo, a wait until NCCL's timeout), unless a launcher stops them (``srun`` does not, without
    ``--kill-on-bad-exit``). A refusal before the processes meet (the guard's, a config check's) ends the main process
    alone: its launcher stops the others (torchrun and ``accelerate launch`` do)."""
    main = accelerator is None or accelerator.is_main_process
    in_use = (f"{folder.root}: another process is running this run (a resume started twice?); wait for it to end, "
              "or stop it, then resume")  # fmt: skip
    with contextlib.ExitStack() as holding:
        refused = None
        if main:
            try:
                holding.enter_context(held(folder.lock, in_use))
            except InUse as err:
                refused = str(err)
            else:
                for swapped in folder.swapped:
                    recover(swapped)
        if accelerator is not None:
            refused = as_the_main_process_has(refused, accelerator)  # the others wait here until the main one has it
        if refused:
            raise InUse(refused)
        yield


def has_checkpoint_to_resume(checkpointer: Checkpointer, mlflow_run: Run | NoRun) -> bool:
    """Whether a resumed run has a last checkpoint; one killed before its first checkpoint (or whose checkpoint
    was moved aside) starts again from step 0 in the same run, said, not silent."""
    if checkpointer.exists():
        return True
    log.warning("%s has no last checkpoint: training starts again from step 0, in the same run",
                checkpointer.folder.parent)  # fmt: skip
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
    warn_if_unreadable(splits["train"], pretrained)
    return pretrained, splits


UNREADABLE = 0.1  # a tenth of the text unknown to the tokenizer: the model cannot learn from much of the data


def warn_if_unreadable(train: Split, pretrained: Pretrained) -> None:
    """A model whose vocabulary misses much of the data's text (an English model on Chinese: ~41% of the characters
    become [UNK]) learns little beyond the majority answer; said before a user waits for it."""
    unknown_id = pretrained.tokenizer.unk_token_id
    share = train.unknown_share(unknown_id) if unknown_id is not None else 0.0
    if share >= UNREADABLE:
        log.warning("%.0f%% of the training text is [UNK] to %s's tokenizer: the model cannot read it, and may learn "
                    "little beyond the majority answer; use a model whose vocabulary covers the data's language "
                    "(for Chinese: model=bert or model=roberta)", 100 * share, pretrained.name_or_path)  # fmt: skip


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


def as_the_main_process_has(value, accelerator):
    """``value`` as the main process has it, on every process (with one process: ``value``). A folder met again
    is judged by the main process alone (``commands.earlier_run``)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


@contextlib.contextmanager
def closed_with_status(mlflow_run: Run, accelerator, system_metrics_seconds: float | None = None):
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
            mlflow_run.log_logs()
        mlflow_run.end(status)
        if accelerator.num_processes > 1:
            accelerator.end_training()  # destroys the process group: exiting with it alive can abort (SIGABRT)


@contextlib.contextmanager
def opened_run(tracked: RunTracking, resume: bool, accelerator, datasets: list[dict]):
    """The run's MLflow run, open for the block and closed with the block's outcome as its status. The main
    process opens (or, resuming, reopens) it; the others log nowhere (a :class:`NoRun`)."""
    mlflow_run = tracked.open(resume) if accelerator.is_main_process else NoRun()
    if datasets:
        mlflow_run.log_datasets(datasets)
    with closed_with_status(mlflow_run, accelerator, tracked.tracking.system_metrics_seconds):
        yield mlflow_run


def check_max_length(max_length: int, pretrained: Pretrained) -> None:
    if max_length > pretrained.max_positions:
        raise ValueError(
            f"data.max_length={max_length}: the model takes at most {pretrained.max_positions} "
            f"positions; set data.max_length<={pretrained.max_positions}"
        )


def complete_record(folder: RunFolder, tracking: MlflowTracking, masker: Masker) -> tuple[dict, int]:
    """``resume=`` on a run that finished on disk: its result.json and MLflow run id, and how many tracking
    records still wait for the store.

    What its process journaled is delivered. If it was killed after writing result.json but before its MLflow
    run was closed, the finish is recorded from the run folder (what the journal already holds is not queued
    again) and the run closed FINISHED; nothing in the folder is rewritten."""
    folder = RunFolder(folder.root.absolute())  # as the run's own process wrote its paths into the journal
    saved = folder.read_result()
    run_id = saved.get("mlflow_run_id")
    with taken(folder):  # not while a process still delivers (or completes) this run
        mlflow_run = tracking.attach(run_id, folder.root, masker) if run_id else NoRun()
        if mlflow_run.active and not mlflow_run.ended:
            log.info("%s finished, but its MLflow run %s was never closed: recording its finish from the folder",
                     folder.root, run_id)  # fmt: skip
            result = FitResult(saved["best_metric"], saved["best_step"], folder.best_model, saved["steps"],
                               saved.get("speed", {}), saved.get("pairs_seen", 0),
                               saved.get("eval_precision", "fp32"))  # fmt: skip
            final = {k: math.nan if v is None else v for k, v in saved.items() if k.startswith("final/")}  # null: NaN
            mlflow_run.completing = True
            RunOutputs(folder, mlflow_run, tracking).record_finish(result, final, saved["metric"])
            mlflow_run.log_logs()
            mlflow_run.end("FINISHED")
        elif mlflow_run.active:
            mlflow_run.outbox.start()
            mlflow_run.outbox.drain(tracking.drain_seconds)
    return saved, mlflow_run.outbox.pending if mlflow_run.active else 0
