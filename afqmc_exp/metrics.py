"""Binary classification metrics for AFQMC: accuracy, F1 of the positive class, ROC-AUC, and the loss.

Accuracy alone hides AFQMC's 69% majority class, so F1 (of label 1, "same meaning") and AUC are always
reported beside it. Computed with numpy (no scikit-learn import on the start-up path); the tests check
them against scikit-learn.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Metric = Literal["accuracy", "f1", "auc", "loss"]  # what trainer.metric may name
GREATER_IS_BETTER: dict[str, bool] = {"accuracy": True, "f1": True, "auc": True, "loss": False}


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
    labels: np.ndarray, prob_same: np.ndarray, loss: float, threshold: float = 0.5
) -> dict[str, float]:
    """Metrics of probabilities of label 1 against labels; the prediction is ``prob >= threshold``."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(prob_same) >= threshold).astype(int)
    true_pos = int(((predicted == 1) & (labels == 1)).sum())
    precision_den, recall_den = int(predicted.sum()), int(labels.sum())
    f1 = 2 * true_pos / (precision_den + recall_den) if precision_den + recall_den else 0.0
    return {
        "loss": float(loss),
        "accuracy": float((predicted == labels).mean()),
        "f1": float(f1),
        "auc": roc_auc(labels, prob_same),
    }


def best_threshold(labels: np.ndarray, prob_same: np.ndarray) -> tuple[float, float]:
    """The threshold (one of the probabilities: predict 1 when ``prob >= threshold``) that maximises F1, and
    that F1; among equal F1s the one closest to 0.5."""
    labels, prob_same = np.asarray(labels).astype(int), np.asarray(prob_same, dtype=np.float64)
    order = np.argsort(-prob_same, kind="mergesort")
    scores, hits = prob_same[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # everything >= that score predicted 1
    true_pos, predicted = np.cumsum(hits)[last_of_run], last_of_run + 1
    f1 = 2 * true_pos / (predicted + max(1, hits.sum()))
    candidates = np.flatnonzero(np.isclose(f1, f1.max()))
    best = candidates[np.argmin(np.abs(scores[last_of_run][candidates] - 0.5))]
    return float(scores[last_of_run][best]), float(f1[best])


def log_loss(labels: np.ndarray, prob_same: np.ndarray) -> float:
    """Mean cross-entropy of probabilities of label 1 (for predictions without logits: ensembles, pooled folds)."""
    labels, prob_same = np.asarray(labels), np.asarray(prob_same, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(np.where(labels == 1, prob_same, 1 - prob_same), 1e-12, 1.0))))
