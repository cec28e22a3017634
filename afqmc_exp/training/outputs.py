"""What a finished run leaves: its best weights scored again from disk, the outputs written to the run folder
(predictions, ``result.json``, plots) and logged to its MLflow run, and the summary a user reads last.
:class:`RunOutputs` owns the two places they go to, the run folder and the MLflow run, and also hands the trainer
the two outputs it writes while it trains: the best weights (``best_weights``) and the profile of a few steps
(``profiling``).

The saved folder, reloaded, is what users get, so it is what is scored, not the model in memory. Outputs are
written by the main process only; every process scores (each a slice of every split, gathered).
"""

from __future__ import annotations

import json
import logging
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import PairData, Split
from ..files import megabytes, replaced_file, size_of
from ..metrics import SCORES, best_threshold, classification_metrics
from ..model import Pretrained, load_pair_classifier, prepare_for_device
from ..plots import dev_plots
from ..run_folder import BEST_MODEL, RunFolder
from ..tracking.masking import mask_uri
from ..tracking.mlflow_run import NoRun, Run
from ..tracking.mlflow_tracking import MlflowTracking, runs_view_link
from .best_weights import BestWeights, update_facts
from .inference import prediction_lines, score
from .profiling import profiled
from .recipe import Recipe, TrainerConfig
from .trainer import FitResult

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """The saved best weights' scores: the ``final/*`` metrics, each scored split's class probabilities, and the
    threshold they predict with."""

    final: dict[str, float]
    probs: dict[str, np.ndarray]
    threshold: float | str


class RunOutputs:
    """What a finished run leaves in its run folder and its MLflow run. ``accelerator``: every process scores,
    the main one writes and logs; without one, a single process (completing a finished run's record)."""

    def __init__(self, folder: RunFolder, mlflow_run: Run | NoRun, tracking: MlflowTracking, accelerator=None):
        self.folder = folder
        self.mlflow_run = mlflow_run
        self.tracking = tracking
        self.accelerator = accelerator

    def best_weights(self, pretrained: Pretrained, recipe: Recipe) -> BestWeights:
        """Where the evaluator keeps the best weights of this training (``best_model/``)."""
        return BestWeights.of_run(self.folder.best_model, pretrained, recipe.data, recipe.trainer.metric, recipe.seed,
                                  self.accelerator)  # fmt: skip

    def profiling(self, config: TrainerConfig):
        """The profiler of ``trainer.profile_steps`` steps, writing into ``profile/`` (the main process's; the
        others profile nothing)."""
        steps = config.profile_steps if self.accelerator.is_main_process else 0
        return profiled(steps, self.folder.profile, config.profile_skip)

    def finish(self, result: FitResult, splits: dict[str, Split], data: PairData, trainer: TrainerConfig) -> None:
        """Score the saved best weights, write the outputs and log them."""
        scored = score_best(result.best_dir, splits, data, trainer.threshold, self.accelerator)
        if not self.accelerator.is_main_process:
            return
        log_summary(result, scored.final, trainer.metric, self.folder, self.tracking,
                    getattr(self.mlflow_run, "experiment_id", None))  # fmt: skip
        self.write(result, splits, scored, data.labels, trainer.metric)
        self.record_finish(result, scored.final, trainer.metric)

    def record_finish(self, result: FitResult, final: dict, metric: str) -> None:
        """What a finished run adds to its MLflow run: the final metrics and speed, the result in its description,
        its files and weights."""
        mlflow_run = self.mlflow_run
        mlflow_run.log_metrics({**final, **{f"speed/{k}": v for k, v in result.speed.items()}}, step=result.steps)
        note = mlflow_run.tags.get("mlflow.note.content", "").split("\n\nBest dev")[0]  # a resumed run: not twice
        mlflow_run.set_tags({"mlflow.note.content": f"{note}\n\n{result_line(result, final, metric)}".strip()})
        self._log_files(result.best_dir)

    def write(self, result: FitResult, splits: dict[str, Split], scored: Scored, labels: list[str],
              metric: str) -> None:  # fmt: skip
        """The dev plots, the predictions and, last, result.json in the run folder: a folder with a result.json
        is a finished run's (``resume=`` completes only its MLflow record), so it is written once all else is."""
        threshold = scored.threshold
        title = self.tracking.run_name or self.mlflow_run.name or ""  # the run's name, MLflow's own if none was given
        self.folder.plots.mkdir(exist_ok=True)
        for name, png in dev_plots(splits["dev"].labels, scored.probs["dev"], labels, title, threshold).items():
            (self.folder.plots / name).write_bytes(png)
        for split, probs in scored.probs.items():  # dev (with sentences and gold labels), extra dev sets, test
            with replaced_file(self.folder.predictions(split)) as out:
                out.writelines(prediction_lines(splits[split].pairs(), probs, labels, threshold, split != "test"))
        record = {"best_metric": result.best_metric, "metric": metric, "best_step": result.best_step,
                  "steps": result.steps, "pairs_seen": result.pairs_seen, "eval_precision": result.eval_precision,
                  **scored.final, "speed": result.speed,
                  "mlflow_run_id": self.mlflow_run.run_id}  # fmt: skip
        with replaced_file(self.folder.result) as result:  # whole or absent: a cut one would pass for finished
            result.write(json_dumps(record, indent=2) + "\n")

    def _log_files(self, best_dir: Path) -> None:
        """The run's files as MLflow artifacts; the best weights as artifacts, a flavour model, a registry version."""
        folder, mlflow_run, tracking = self.folder, self.mlflow_run, self.tracking
        for path in (*folder.all_predictions(), folder.result):
            mlflow_run.log_artifact(path)
        mlflow_run.log_table(folder.predictions("dev"), "dev_predictions_table.json")  # sortable in the UI
        for outputs in (folder.plots, folder.profile):  # profile/: when trainer.profile_steps > 0
            mlflow_run.log_artifacts(outputs, outputs.name)
        mlflow_run.log_masked_artifacts(folder.hydra, "hydra")  # the config, its secrets masked
        if tracking.log_weights or tracking.register_as:
            mlflow_run.log_artifacts(best_dir, BEST_MODEL)
        if tracking.log_model:  # registered (if asked) as the model to serve, usable without this project
            mlflow_run.log_served_model(best_dir, register_as=tracking.register_as)
        elif tracking.register_as:
            mlflow_run.register(tracking.register_as, BEST_MODEL)


def result_line(result: FitResult, final: dict, metric: str) -> str:
    """The run's result in a line. Evaluations in bf16 (a CPU with AMX, by default) can differ from the fp32 scores of
    the weights read back by a pair or two: the line says which precision gave which number."""
    scores = " ".join(f"{k.removeprefix('final/')}={v:.4f}" for k, v in final.items()
                      if k.rsplit("_", 1)[-1] in SCORES or k.endswith("macro_f1"))  # fmt: skip
    bf16 = result.eval_precision == "bf16"
    return f"Best dev {metric} {result.best_metric:.4f}{' (evaluated in bf16)' if bf16 else ''} at step " \
        f"{result.best_step} of {result.steps}; the best weights scored again from disk{' in fp32' if bf16 else ''}: " \
        f"{scores}"  # fmt: skip


def log_summary(result: FitResult, final: dict, metric: str, folder: RunFolder, tracking: MlflowTracking,
                experiment_id: str | None = None) -> None:  # fmt: skip
    """What a user wants to read last: how good, where the weights are, how to browse the run (and, where the
    experiment is known, its runs table with the columns that tell runs apart)."""
    log.info("%s", result_line(result, final, metric))
    best = folder.best_model
    copied = tracking.enabled and (tracking.log_weights or tracking.register_as)
    log.info("best weights: %s (%s on disk%s)", best, megabytes(size_of(best)), ", and a copy in MLflow's artifacts "
             "(tracking.log_weights=false keeps one)" if copied else "")  # fmt: skip
    if tracking.enabled:
        store = mask_uri(tracking.uri)
        local = store.startswith(("sqlite", "file:")) or "://" not in store
        browse = f"mlflow ui --backend-store-uri {shlex.quote(store)} --host 127.0.0.1 --workers 1" if local else store
        log.info("MLflow run %r in experiment %r: %s", tracking.run_name, tracking.experiment, browse)
        if experiment_id is not None and (local or store.startswith(("http://", "https://"))):  # a UI to open
            log.info("its runs beside each other (best dev %s, dev loss, model, task, lr, batch, seed): %s", metric,
                     runs_view_link("http://127.0.0.1:5000" if local else store, experiment_id))  # fmt: skip


def scored_splits(splits: dict[str, Split]) -> list[str]:
    """What the best weights are scored on, dev first (a tuned threshold is chosen there): dev, the extra dev
    sets, the test file."""
    return ["dev", *(name for name in splits if name.startswith("dev_")), *(["test"] if "test" in splits else [])]


def score_best(best_dir: Path, splits: dict[str, Split], data: PairData, threshold: float | str,
               accelerator) -> Scored:  # fmt: skip
    """Metrics of the saved best weights on every split but train (those with labels), their class
    probabilities, and the threshold they predict with (``tune``, binary tasks: the one that maximises dev F1,
    saved in the weights' meta). The saved folder, reloaded, is what users get: it is scored, not the
    in-memory model."""
    names = scored_splits(splits)
    log.info("scoring the best weights (%s) on %s", best_dir, ", ".join(f"{n} ({len(splits[n])} pairs)" for n in names))
    best = prepare_for_device(load_pair_classifier(str(best_dir)), accelerator.device.type)
    batching = dict(batch_size=data.eval_batch_size, pad_to_multiple_of=data.pad_to_multiple_of, names=data.labels)
    final, probs = {}, {}
    for name in names:
        probs[name], loss, metrics = score(best, splits[name], accelerator=accelerator,
                                           threshold=0.5 if threshold == "tune" else threshold, **batching)  # fmt: skip
        if name == "dev" and threshold == "tune":
            threshold = tune_threshold(splits["dev"].labels, probs["dev"], best_dir)
            metrics = classification_metrics(splits["dev"].labels, probs["dev"], loss, threshold, data.labels)
        elif name != "dev" and threshold != 0.5 and metrics is not None:  # the tuned threshold everywhere
            metrics = classification_metrics(splits[name].labels, probs[name], loss, threshold, data.labels)
        final.update({f"final/{name}_{k}": v for k, v in (metrics or {}).items()})
    if len(data.labels) == 2:
        final["final/threshold"] = threshold
    return Scored(final, probs, threshold)


def tune_threshold(labels: np.ndarray, probs: np.ndarray, best_dir: Path) -> float:
    """The dev-F1-best threshold for the best weights, written into their meta (evaluate/predict use it)."""
    threshold, f1 = best_threshold(labels, probs[:, 1])
    update_facts(best_dir, threshold=threshold)
    log.warning(
        "threshold %.4f maximises dev F1 (%.4f) and is saved with the best weights; dev metrics at it are "
        "optimistic, as it was chosen on the same dev set: for a clean threshold, sweep data.folds=K "
        "data.fold=0..K-1 (the sweep's parent gets the out-of-fold one)", threshold, f1,
    )  # fmt: skip
    return threshold


def json_dumps(value, **kwargs) -> str:
    """JSON with NaN and infinities as null (``json.dumps`` would write bare NaN, which is not JSON)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, list) else v

    return json.dumps(clean(value), allow_nan=False, **kwargs)
