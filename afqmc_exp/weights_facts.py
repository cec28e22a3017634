"""The facts saved beside best weights (``afqmc_exp.json``): the one owner of that file's name, its defaults and how
it is read.

The trainer writes it with the weights (the task, its labels in class-id order, the file format and fields, the
max length, the metric and its best value, the base model, the step), the run adds a tuned threshold, and
``evaluate``/``predict``, the served model and the Model Registry's version description read it. Weights saved by
anyone else have no such file: they are used with ``DEFAULTS``. This module imports nothing of afqmc_exp, so a
logged model carries it (``code_paths``) and the served model reads the facts without this project.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "afqmc_exp.json"
DEFAULTS = {"max_length": 128, "threshold": 0.5}  # weights without our facts: BERT's usual length, the even odds


class FactsError(ValueError):
    """The facts saved beside weights cannot be read; the message says which file and what to do."""


def read_facts(folder: str | Path) -> dict:
    """The facts saved beside ``folder``'s weights; {} for weights saved by anyone else."""
    path = Path(folder) / FILE
    if not path.exists():
        return {}
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise FactsError(f"{path}: damaged ({error}); delete it to use the weights with the defaults "
                         f"(max_length {DEFAULTS['max_length']}, threshold {DEFAULTS['threshold']}, labels from "
                         "config.json)") from None  # fmt: skip
    if not isinstance(facts, dict):
        raise FactsError(f"{path}: not a JSON object; delete it to use the weights with the defaults")
    return facts


def facts_text(facts: dict) -> str:
    """The file's text: indented JSON, one fact per line."""
    return json.dumps(facts, indent=2, ensure_ascii=False) + "\n"
