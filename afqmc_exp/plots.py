"""Figures of one run's best weights on the dev set, saved as PNG artifacts for the MLflow UI.

Curves are computed here with numpy (the same threshold sweep for PR and ROC); matplotlib is imported
only when figures are drawn, with the non-interactive Agg backend so runs on servers need no display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import roc_auc
from .model import LABELS


def curves(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, false- and true-positive rates at every distinct score threshold."""
    order = np.argsort(-scores, kind="mergesort")
    labels, scores = np.asarray(labels)[order].astype(bool), np.asarray(scores)[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_pos = np.cumsum(labels)[last_of_run]
    false_pos = (last_of_run + 1) - true_pos
    positives, negatives = max(labels.sum(), 1), max((~labels).sum(), 1)
    return {
        "precision": true_pos / (true_pos + false_pos),
        "recall": true_pos / positives,
        "fpr": np.r_[0.0, false_pos / negatives],
        "tpr": np.r_[0.0, true_pos / positives],
    }


def confusion(labels: np.ndarray, prob_same: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    predicted = (np.asarray(prob_same) >= threshold).astype(int)
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (np.asarray(labels).astype(int), predicted), 1)
    return matrix


def save_dev_plots(
    labels: np.ndarray, prob_same: np.ndarray, folder: Path, title: str = "", threshold: float = 0.5
) -> list[Path]:
    """confusion_matrix.png, pr_curve.png, roc_curve.png in ``folder``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw, size in (
        ("confusion_matrix.png", _draw_confusion, (4.2, 3.8)),
        ("pr_curve.png", _draw_precision_recall, (4.6, 3.8)),
        ("roc_curve.png", _draw_roc, (4.6, 3.8)),
    ):
        figure, ax = plt.subplots(figsize=size)
        draw(ax, np.asarray(labels), np.asarray(prob_same), title, threshold)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=110)
        plt.close(figure)
        paths.append(folder / name)
    return paths


def _draw_confusion(ax, labels: np.ndarray, prob_same: np.ndarray, title: str, threshold: float) -> None:
    matrix = confusion(labels, prob_same, threshold)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    names = [LABELS[0], LABELS[1]]
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="gold")
    ax.set_title(f"dev confusion matrix (threshold {threshold:.3g})\n{title}".strip())


def _draw_precision_recall(ax, labels: np.ndarray, prob_same: np.ndarray, title: str, threshold: float) -> None:
    c = curves(labels, prob_same)
    ax.plot(c["recall"], c["precision"])
    ax.axhline(np.mean(labels), ls="--", c="grey", lw=1, label="always 'same'")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"dev precision-recall\n{title}".strip())
    ax.legend(loc="lower left")


def _draw_roc(ax, labels: np.ndarray, prob_same: np.ndarray, title: str, threshold: float) -> None:
    c = curves(labels, prob_same)
    ax.plot(c["fpr"], c["tpr"], label=f"AUC {roc_auc(labels, prob_same):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(f"dev ROC\n{title}".strip())
    ax.legend(loc="lower right")
