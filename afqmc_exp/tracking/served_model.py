"""The model ``tracking.log_model=true`` logs: a pyfunc that answers pairs exactly as ``afqmc-predict`` does.

It is logged as code (MLflow's "models from code"): this file travels inside the logged model beside the best
weights (the artifact ``weights``) and ``answers.py``, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
need numpy, pandas, torch, transformers and MLflow, not this project. (No ``from __future__ import annotations``:
MLflow reads ``predict``'s type hints as objects.) It reads the facts saved with the
weights (``afqmc_exp.json``: the labels, max_length and a tuned threshold), scores ``text``/``text_pair``
columns in batches and answers ``{"label", "prob", "probs"}`` per pair (``answers``): the same labels, the same
probabilities and the same threshold as every other way of predicting.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

try:
    from afqmc_exp.answers import answer
except ImportError:  # served without this project: answers.py travels with the model (code_paths)
    from answers import answer

BATCH = 64


class PairClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(context.artifacts["weights"])
        meta = json.loads((folder / "afqmc_exp.json").read_text()) if (folder / "afqmc_exp.json").exists() else {}
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        config = self.model.config
        self.labels = [str(x) for x in meta.get("labels") or [config.id2label[i] for i in range(config.num_labels)]]
        self.threshold, self.max_length = float(meta.get("threshold", 0.5)), int(meta.get("max_length", 128))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """The answers to the pairs of ``model_input`` (typed: MLflow then checks nothing more, and asks for nothing:
        the logged signature comes from the input example)."""
        import torch

        firsts, seconds = list(map(str, model_input["text"])), list(map(str, model_input["text_pair"]))
        probs = []
        for start in range(0, len(firsts), BATCH):
            encoded = self.tokenizer(firsts[start : start + BATCH], seconds[start : start + BATCH], truncation=True,
                                     max_length=self.max_length, padding=True, return_tensors="pt")  # fmt: skip
            with torch.inference_mode():
                probs.append(self.model(**encoded).logits.float().softmax(-1).numpy())
        rows = [answer(p, self.labels, self.threshold) for p in np.concatenate(probs)]
        return pd.DataFrame(rows)


mlflow.models.set_model(PairClassifier())
