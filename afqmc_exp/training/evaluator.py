"""The trainer's evaluator: when an evaluation is due, and what it does: score the model on dev and the extra dev
sets, keep the best weights by one metric, and say when early stopping should stop.

As torchtitan's ``validator.should_validate(step)``, the loop says where it stands and the evaluator decides
(:meth:`Evaluator.due`): every ``eval_every`` steps, else at each epoch's end (and the loop asks once more at the
end, for steps no evaluation saw). What an evaluation does is here, in its order: score every dev set, keep the
weights if dev improved (the run's :class:`~afqmc_exp.training.best_weights.BestWeights`), log the scores (to the
run's metrics, flushed at once so dev curves show up as they are computed, and as one line through ``logging``, so
it lands in ``train.log`` and SLURM logs too), tell an Optuna trial (its pruning), and count the evaluations since
the best for ``patience``.

Where it stands (the best value and step, evaluations since, the step last evaluated) lives in the
:class:`TrainState` that the last checkpoint saves, so a resumed run keeps the same best and patience. A
``tune`` threshold is chosen once, on the best weights, after training (see ``outputs``); until then
evaluations predict at 0.5.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from ..data import Split
from ..metrics import SCORES, improves
from .best_weights import BestWeights
from .checkpoint import TrainState
from .inference import evaluate
from .recipe import TrainerConfig

log = logging.getLogger(__name__)
SHOWN = ("loss", *SCORES)  # the metrics an evaluation's log line shows


class Metrics(Protocol):
    """Where a run's metrics go (its MLflow run, or a ``NoRun`` that drops them)."""

    def log_metrics(self, metrics: dict, step: int) -> None: ...

    def flush(self) -> None: ...


class Evaluator:
    """Evaluates ``model`` on every loader of ``loaders`` (``dev`` first, then each ``dev_<name>``) when ``config``
    says an evaluation is due, keeping the best weights in ``best`` and logging to ``metrics``."""

    def __init__(self, *, model, loaders: dict, splits: dict[str, Split], labels: list[str], accelerator,
                 config: TrainerConfig, best: BestWeights, metrics: Metrics,
                 on_evaluate: Callable[[int, float], None] | None = None):  # fmt: skip
        self.model, self.loaders, self.splits, self.labels = model, loaders, splits, labels
        self.accelerator, self.best, self.metrics = accelerator, best, metrics
        self.every, self.bf16 = config.eval_every, config.eval_precision == "bf16"
        self.metric, self.patience = config.metric, config.patience
        self.threshold = 0.5 if config.threshold == "tune" else config.threshold  # tune: chosen after training
        self.on_evaluate = on_evaluate  # (step, dev metric) after each evaluation: an Optuna trial's pruning
        self.dev_samples_per_s: float | None = None  # the last dev evaluation's speed

    def due(self, step: int, *, epoch_end: bool = False) -> bool:
        """Whether an evaluation is due after optimizer step ``step`` (or at an epoch's end)."""
        return epoch_end if not self.every else not epoch_end and step % self.every == 0

    def evaluate(self, state: TrainState, total_steps: int) -> bool:
        """Evaluate at ``state.step``, keep the weights if dev improved; True when early stopping says stop."""
        scores = {name: self._scores(name) for name in self.loaders}
        improved = self._keep_if_best(scores["dev"][self.metric], state)
        state.evaluated_at = state.step
        self._log(scores, state, improved, total_steps)
        if self.on_evaluate is not None:
            self.on_evaluate(state.step, scores["dev"][self.metric])
        return self.patience is not None and state.evals_since_best >= self.patience

    def _scores(self, name: str) -> dict[str, float]:
        """The metrics of the model now on one evaluation set (dev's speed is recorded)."""
        started = time.perf_counter()
        metrics, _ = evaluate(self.model, self.loaders[name], self.splits[name], self.accelerator, self.labels,
                              self.bf16, self.threshold)  # fmt: skip
        if name == "dev":
            self.dev_samples_per_s = len(self.splits[name]) / (time.perf_counter() - started)
        return metrics

    def _keep_if_best(self, value: float, state: TrainState) -> bool:
        if not improves(self.metric, value, state.best):
            state.evals_since_best += 1
            return False
        state.best, state.best_step, state.evals_since_best = value, state.step, 0
        self.best.keep(state.step, value)
        return True

    def _log(self, scores: dict[str, dict], state: TrainState, improved: bool, total_steps: int) -> None:
        logged = {f"{name}/{k}": v for name, values in scores.items() for k, v in values.items()}
        best = {f"best/dev_{self.metric}": state.best, "best/step": state.best_step}
        self.metrics.log_metrics({**logged, **best}, state.step)
        self.metrics.flush()
        if self.accelerator.is_main_process:
            dev = scores["dev"]
            shown = " ".join(f"{k}={dev[k]:.4f}" for k in SHOWN if k in dev)
            log.info("step %d/%d: dev %s%s", state.step, total_steps, shown, " (best)" if improved else "")
