"""The trainer's evaluator: scores the model on dev and the extra dev sets, keeps the best weights by one metric,
and says when early stopping should stop.

The trainer only says *when* (every ``eval_every`` steps, or at each epoch's end, and once at the end for steps no
evaluation saw); what an evaluation does is here, in its order: score every dev set, keep the weights if dev
improved, log the scores (to MLflow, flushed at once so dev curves show up as they are computed, and as one line
through ``logging``, so it lands in ``train.log`` and SLURM logs too), tell an Optuna trial (its pruning), and
count the evaluations since the best for ``patience``.

Where it stands (the best value and step, evaluations since, the step last evaluated) lives in the
:class:`TrainState` that the last checkpoint saves, so a resumed run keeps the same best and patience. A
``tune`` threshold is chosen once, on the best weights, after training (see ``outputs``); until then
evaluations predict at 0.5.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..data import Split
from ..metrics import SCORES, Metric, improves
from .checkpoint import TrainState
from .inference import evaluate

log = logging.getLogger(__name__)
SHOWN = ("loss", *SCORES)  # the metrics an evaluation's log line shows


class Evaluator:
    """Evaluates ``model`` on every loader of ``loaders`` (``dev`` first, then each ``dev_<name>``);
    ``keep_best()`` saves the model as the best weights."""

    def __init__(
        self,
        *,
        model,
        loaders: dict,
        splits: dict[str, Split],
        labels: list[str],
        accelerator,
        bf16: bool,
        metric: Metric,
        patience: int | None,
        threshold: float,
        keep_best: Callable[[], None],
        log_metrics: Callable[[dict, int], None],
        flush_metrics: Callable[[], None],
        on_evaluate: Callable[[int, float], None] | None,
    ):
        self.model, self.loaders, self.splits, self.labels = model, loaders, splits, labels
        self.accelerator, self.bf16 = accelerator, bf16
        self.metric, self.patience, self.threshold = metric, patience, threshold
        self.keep_best, self.log_metrics, self.flush_metrics = keep_best, log_metrics, flush_metrics
        self.on_evaluate = on_evaluate  # (step, dev metric) after each evaluation: an Optuna trial's pruning
        self.dev_samples_per_s: float | None = None  # the last dev evaluation's speed

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
        self.keep_best()
        return True

    def _log(self, scores: dict[str, dict], state: TrainState, improved: bool, total_steps: int) -> None:
        logged = {f"{name}/{k}": v for name, values in scores.items() for k, v in values.items()}
        best = {f"best/dev_{self.metric}": state.best, "best/step": state.best_step}
        self.log_metrics({**logged, **best}, state.step)
        self.flush_metrics()
        if self.accelerator.is_main_process:
            dev = scores["dev"]
            shown = " ".join(f"{k}={dev[k]:.4f}" for k in SHOWN if k in dev)
            log.info("step %d/%d: dev %s%s", state.step, total_steps, shown, " (best)" if improved else "")
