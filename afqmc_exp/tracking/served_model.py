"""The model ``tracking.log_model=true`` logs: a pyfunc that answers pairs exactly as ``afqmc-predict`` does.

It is logged as code (MLflow's "models from code"): this file travels inside the logged model beside the best
weights (the artifact ``weights``) and ``answers.py``, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
need numpy, pandas, torch, transformers and MLflow, not this project. (No ``from __future__ import annotations``:
MLflow reads ``predict``'s type hints as objects.) It reads the facts saved with the
weights (``weights_facts``: the labels, max_length, a tuned threshold, the task's fields), scores pairs in batches
and answers ``{"label", "prob", "probs"}`` per pair (``answers``): the same labels, the same probabilities and the
same threshold as every other way of predicting.

A request names its two columns as Hugging Face does (``text``/``text_pair``), as the CLUE tasks do
(``sentence1``/``sentence2``) or as the task's own files did (``data.fields``, e.g. ``q1``/``q2``): every one
of them is an optional column of the logged signature (``pair_columns``), so MLflow's server lets each through
and this model takes the first pair a request holds.
"""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

try:
    from afqmc_exp.answers import answer
    from afqmc_exp.weights_facts import DEFAULTS, read_facts
except ImportError:  # served without this project: answers.py and weights_facts.py travel with it (code_paths)
    from answers import answer
    from weights_facts import DEFAULTS, read_facts

BATCH = 64
PAIR_NAMES = [("text", "text_pair"), ("sentence1", "sentence2")]  # Hugging Face's, the CLUE files'


def pair_columns(facts: dict) -> list[tuple[str, str]]:
    """The column pairs a request may use: ``PAIR_NAMES`` and the task's own fields (named columns only)."""
    fields = facts.get("fields") or {}
    own = (fields.get("text_a"), fields.get("text_b"))
    named = all(isinstance(name, str) for name in own) and own not in PAIR_NAMES
    return PAIR_NAMES + [own] * named


class PairClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(context.artifacts["weights"])
        meta = read_facts(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        config = self.model.config
        self.labels = [str(x) for x in meta.get("labels") or [config.id2label[i] for i in range(config.num_labels)]]
        self.columns = pair_columns(meta)
        self.threshold, self.max_length = (
            float(meta.get("threshold", DEFAULTS["threshold"])),
            int(meta.get("max_length", DEFAULTS["max_length"])),
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """The answers to the pairs of ``model_input`` (typed: MLflow then checks nothing more, and asks for nothing:
        the logged signature comes from the input example)."""
        import torch

        first, second = self.columns_of(model_input)
        firsts, seconds = list(map(str, model_input[first])), list(map(str, model_input[second]))
        probs = []
        for start in range(0, len(firsts), BATCH):
            encoded = self.tokenizer(firsts[start : start + BATCH], seconds[start : start + BATCH], truncation=True,
                                     max_length=self.max_length, padding=True, return_tensors="pt")  # fmt: skip
            with torch.inference_mode():
                probs.append(self.model(**encoded).logits.float().softmax(-1).numpy())
        rows = [answer(p, self.labels, self.threshold) for p in np.concatenate(probs)]
        return pd.DataFrame(rows)

    def columns_of(self, model_input: pd.DataFrame) -> tuple[str, str]:
        """The first of ``self.columns`` the request holds; else an error the server answers with HTTP 400."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        found = next((pair for pair in self.columns if set(pair) <= set(model_input.columns)), None)
        if found is None:
            names = " or ".join("/".join(pair) for pair in self.columns)
            got = ", ".join(model_input.columns) or "none of them: the server drops columns the signature lacks"
            raise MlflowException(f"each pair needs two columns: {names} (got {got})",
                                  error_code=INVALID_PARAMETER_VALUE)  # fmt: skip
        return found


mlflow.models.set_model(PairClassifier())
