"""One pair's answer from its class probabilities, in the one format every way of predicting uses: the prediction
files, ``afqmc-predict`` and the model ``tracking.log_model`` logs for serving.

``{"label", "prob", "probs"}``: the label as the data writes it (AFQMC's ``"1"``, CMNLI's ``"entailment"``), the
probability of every label, and, for a binary task, ``prob``: its positive (second) label's probability, which
the threshold is applied to; with more labels the most probable one is the answer. It needs numpy only, so
the served model can carry this file instead of this project (see ``served_model``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def predicted(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class ids from probabilities ``(pairs, classes)``: see the module docstring."""
    probs = np.asarray(probs)
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def answer(probs: np.ndarray, names: Sequence[str], threshold: float = 0.5) -> dict:
    """One pair's answer from its class probabilities (see the module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    label = names[int(predicted(probs[None, :], threshold)[0])]
    shown = {name: round(float(p), 6) for name, p in zip(names, probs, strict=True)}
    return {"label": label, **({"prob": shown[names[1]]} if len(names) == 2 else {}), "probs": shown}
