"""Figures of one run's best weights on the dev set, drawn as PNG images (the run saves them as artifacts for the
MLflow UI).

Every task gets its confusion matrix (K x K, labelled with the task's labels) and its precision-recall and ROC
curves: a binary task's of its positive label's probability, a task of three or more labels' one curve per label
(that label against the rest). Curves are computed here with numpy
(the same threshold sweep for PR and ROC); matplotlib is imported only when figures are drawn, with the
non-interactive Agg backend so runs on servers need no display, and with its INFO logging off (on a new
machine it announces the font cache it builds, after the run's summary).
"""

from __future__ import annotations

import io
import logging

import numpy as np

from .answers import predicted
from .metrics import roc_auc


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


def confusion(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Counts of (gold, predicted) class pairs: rows are gold labels."""
    classes = np.asarray(probs).shape[1]
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (np.asarray(labels).astype(int), predicted(probs, threshold)), 1)
    return matrix


def pyplot():
    """matplotlib.pyplot on the Agg backend, its INFO lines off."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    return plt


def dev_plots(labels: np.ndarray, probs: np.ndarray, names: list[str], title: str = "",
              threshold: float = 0.5) -> dict[str, bytes]:  # fmt: skip
    """confusion_matrix.png, pr_curve.png and roc_curve.png, each file's name and PNG bytes (the caller decides
    where they are written: ``outputs`` puts them in the run folder's ``plots/``)."""
    plt = pyplot()

    side = 3.2 + 0.5 * len(names)
    curve = (4.6, 3.8)
    drawings = [("confusion_matrix.png", _draw_confusion, (side + 0.4, side)),
                ("pr_curve.png", _draw_precision_recall, curve), ("roc_curve.png", _draw_roc, curve)]  # fmt: skip
    pngs = {}
    for name, draw, size in drawings:
        figure, ax = plt.subplots(figsize=size)
        draw(ax, np.asarray(labels), np.asarray(probs), names, title, threshold)
        figure.tight_layout()
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=110)
        plt.close(figure)
        pngs[name] = png.getvalue()
    return pngs


def _draw_confusion(ax, labels: np.ndarray, probs: np.ndarray, names: list[str], title: str, threshold: float):
    matrix = confusion(labels, probs, threshold)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    ticks = list(range(len(names)))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="gold")
    rule = f"threshold {threshold:.3g}" if len(names) == 2 else "most probable label"
    ax.set_title(f"dev confusion matrix ({rule})\n{title}".strip())


def each_label(labels: np.ndarray, probs: np.ndarray, names: list[str]):
    """(name, is it this label, its probability) per curve: the positive label of a binary task, else every label
    against the rest."""
    shown = [1] if len(names) == 2 else range(len(names))
    return [(names[k], np.asarray(labels) == k, probs[:, k]) for k in shown]


def _draw_precision_recall(ax, labels: np.ndarray, probs: np.ndarray, names: list[str], title: str, threshold):
    for name, gold, scores in each_label(labels, probs, names):
        c = curves(gold, scores)
        line = ax.plot(c["recall"], c["precision"], label=f"{name!r}")[0]
        ax.axhline(np.mean(gold), ls="--", c=line.get_color(), lw=1, label=f"always {name!r}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"dev precision-recall\n{title}".strip())
    ax.legend(loc="lower left", fontsize="small")


def _draw_roc(ax, labels: np.ndarray, probs: np.ndarray, names: list[str], title: str, threshold: float):
    for name, gold, scores in each_label(labels, probs, names):
        c = curves(gold, scores)
        ax.plot(c["fpr"], c["tpr"], label=f"{name!r}: AUC {roc_auc(gold.astype(int), scores):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(f"dev ROC\n{title}".strip())
    ax.legend(loc="lower right", fontsize="small")
