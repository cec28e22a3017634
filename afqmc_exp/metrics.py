"""Classification metrics for any number of classes, and the loss.

Every task gets accuracy, macro-F1 (the mean of the per-class F1s, over the classes that occur in the gold
labels or the predictions, as scikit-learn's ``average="macro"``) and each class's F1 (``f1_<label>``).
Binary tasks also get ``f1``, the F1 of the positive class (the second label: AFQMC's "1", same meaning),
and ROC-AUC of its probability: accuracy alone hides AFQMC's 69% majority class. A binary prediction is
``P(positive) >= threshold``; with more classes it is the most probable one. Computed with numpy (no
scikit-learn import on the start-up path); the tests check them against scikit-learn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .answers import predicted

# The scores of a task's predictions, the one list of them: a task's official metric is one (data.metric), the
# evaluation line, the run's summary and the report show each; a new one is added here and in classification_metrics
SCORES = ("accuracy", "macro_f1", "f1", "auc")
Score = Literal["accuracy", "macro_f1", "f1", "auc"]  # SCORES, as a type the config checks read
Metric = Literal[Score, "loss"]  # what trainer.metric may name: a score, or the dev loss
GREATER_IS_BETTER: dict[str, bool] = {"accuracy": True, "macro_f1": True, "f1": True, "auc": True, "loss": False}
BINARY_ONLY = ("f1", "auc")


def improves(metric: Metric, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best``: the first value always does (so a best always exists),
    and any number beats NaN."""
    if best is None:
        return True
    if math.isnan(best):
        return not math.isnan(value)
    return value > best if GREATER_IS_BETTER[metric] else value < best


def metric_name(label: str) -> str:
    """A label as MLflow accepts it in a metric name (``f1_<label>``)."""
    return re.sub(r"[^\w.\- ]", "_", str(label))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores averaged); NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank (1-based) over each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, loss: float, threshold: float = 0.5, names: Sequence[str] | None = None
) -> dict[str, float]:
    """Metrics of class probabilities ``(pairs, classes)`` against class ids ``labels``."""
    labels, probs = np.asarray(labels).astype(np.int64), np.asarray(probs, dtype=np.float64)
    classes = probs.shape[1]
    names = list(names) if names is not None else [str(k) for k in range(classes)]
    guess = predicted(probs, threshold)
    true_pos = np.bincount(labels[guess == labels], minlength=classes)
    support = np.bincount(labels, minlength=classes) + np.bincount(guess, minlength=classes)
    f1 = np.divide(2 * true_pos, support, out=np.zeros(classes), where=support > 0)
    metrics = {
        "loss": float(loss),
        "accuracy": float((guess == labels).mean()),
        "macro_f1": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        **{f"f1_{metric_name(name)}": float(value) for name, value in zip(names, f1, strict=True)},
    }
    if classes == 2:
        metrics.update(f1=float(f1[1]), auc=roc_auc(labels, probs[:, 1]))
    return metrics


def best_threshold(labels: np.ndarray, prob_positive: np.ndarray) -> tuple[float, float]:
    """The threshold (one of the probabilities: predict positive when ``prob >= threshold``) that maximises
    F1 of the positive class, and that F1; among equal F1s the one closest to 0.5."""
    labels, prob_positive = np.asarray(labels).astype(int), np.asarray(prob_positive, dtype=np.float64)
    order = np.argsort(-prob_positive, kind="mergesort")
    scores, hits = prob_positive[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # everything >= that score predicted 1
    true_pos, predicted_pos = np.cumsum(hits)[last_of_run], last_of_run + 1
    f1 = 2 * true_pos / (predicted_pos + max(1, hits.sum()))
    candidates = np.flatnonzero(np.isclose(f1, f1.max()))
    best = candidates[np.argmin(np.abs(scores[last_of_run][candidates] - 0.5))]
    return float(scores[last_of_run][best]), float(f1[best])


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of class probabilities (for predictions without logits: ensembles, pooled folds)."""
    labels, probs = np.asarray(labels).astype(np.int64), np.asarray(probs, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))
