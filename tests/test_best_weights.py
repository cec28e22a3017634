"""The best weights (``training/best_weights.py``): kept with their facts whenever dev improves, a later fact (the
tuned threshold) added without losing the others, and read back as anyone's ``from_pretrained`` loads them."""

import json

from afqmc_exp.data import PairData
from afqmc_exp.training.best_weights import BestWeights, read_facts, update_facts
from afqmc_exp.training.hardware import build_accelerator
from helpers import tiny_pretrained


def test_kept_weights_carry_the_facts_of_their_step_and_a_tuned_threshold_joins_them(tmp_path):
    from transformers import AutoModelForSequenceClassification

    pretrained = tiny_pretrained(tmp_path / "tiny")
    data = PairData(dir=str(tmp_path), max_length=24)
    best = BestWeights.of_run(tmp_path / "run" / "best_model", pretrained, data, "f1", 7, build_accelerator("cpu"))
    best.keep(step=3, value=0.5)
    best.keep(step=9, value=0.75)  # a better evaluation replaces the folder
    facts = read_facts(best.folder)
    assert facts == {  # what evaluate, predict and the served model read to use the weights as they were trained
        "task": "afqmc", "labels": ["0", "1"], "format": "jsonl", "drop_labels": [],
        "fields": {"text_a": "sentence1", "text_b": "sentence2", "label": "label", "id": "id"},
        "max_length": 24, "eval_batch_size": "auto", "metric": "f1", "base_model": str(tmp_path / "tiny"), "seed": 7,
        "step": 9, "f1": 0.75,
    }  # fmt: skip
    update_facts(best.folder, threshold=0.31)
    again = json.loads((best.folder / "afqmc_exp.json").read_text())
    assert again == {**facts, "threshold": 0.31}
    loaded = AutoModelForSequenceClassification.from_pretrained(best.folder)
    assert loaded.config.num_labels == 2 and sorted(p.name for p in tmp_path.joinpath("run").iterdir()) == [
        "best_model"
    ]  # no staging folder left beside it
