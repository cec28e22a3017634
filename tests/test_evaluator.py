"""The trainer's evaluator (``training/evaluator.py``) on a tiny model: every dev set scored and logged, the best
weights kept only when dev improves by the chosen metric, patience counted from the best, an Optuna trial told,
and the line a log reader sees."""

import logging

import pytest
import torch

from afqmc_exp.data import make_loader
from afqmc_exp.training.checkpoint import TrainState
from afqmc_exp.training.evaluator import Evaluator
from afqmc_exp.training.hardware import build_accelerator
from afqmc_exp.training.recipe import TrainerConfig
from helpers import pairs_split, tiny_pairs, tiny_pretrained


@pytest.fixture
def evaluated(tmp_path):
    """An evaluator over dev and one extra dev set, recording what it keeps, logs and tells."""
    pretrained = tiny_pretrained(tmp_path / "tiny")
    pretrained.model.eval()
    splits = {"dev": pairs_split(tiny_pairs(20, seed=2), pretrained.tokenizer, 24),
              "dev_other": pairs_split(tiny_pairs(12, seed=3), pretrained.tokenizer, 24)}  # fmt: skip
    loaders = {name: make_loader(split, pretrained.tokenizer.pad_token_id, 8, train=False)
               for name, split in splits.items()}  # fmt: skip
    record = {"kept": [], "logged": [], "told": [], "flushed": 0}
    state = TrainState()

    class Recorded:
        """The run's best weights and metrics, as the evaluator uses them."""

        def keep(self, step, value):
            record["kept"].append(step)

        def log_metrics(self, metrics, step):
            record["logged"].append((step, metrics))

        def flush(self):
            record["flushed"] += 1

    def make(metric="accuracy", patience=None, eval_every=None):
        config = TrainerConfig(metric=metric, patience=patience, eval_every=eval_every, eval_precision="fp32")
        return Evaluator(
            model=pretrained.model, loaders=loaders, splits=splits, labels=["0", "1"],
            accelerator=build_accelerator(device="cpu"), config=config, best=Recorded(), metrics=Recorded(),
            on_evaluate=lambda step, value: record["told"].append((step, value)),
        )  # fmt: skip

    return make, state, record, pretrained.model


def test_an_evaluation_scores_every_dev_set_keeps_the_first_as_best_and_logs_it(evaluated, caplog):
    make, state, record, _ = evaluated
    caplog.set_level("INFO", logger="afqmc_exp.training.evaluator")
    state.step = 5
    assert make().evaluate(state, total_steps=10) is False
    ((step, metrics),) = record["logged"]
    assert step == 5 and {"dev/loss", "dev/accuracy", "dev/f1", "dev/auc", "dev_other/accuracy"} <= set(metrics)
    assert metrics["best/dev_accuracy"] == metrics["dev/accuracy"] == state.best and metrics["best/step"] == 5
    assert record["kept"] == [5] and record["told"] == [(5, metrics["dev/accuracy"])] and record["flushed"] == 1
    assert state.evaluated_at == 5 and state.best_step == 5 and state.evals_since_best == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "afqmc_exp.training.evaluator"]
    assert line.startswith("step 5/10: dev loss=") and " accuracy=" in line and line.endswith(" (best)")


def test_no_improvement_keeps_nothing_and_patience_stops_after_that_many(evaluated):
    make, state, record, _ = evaluated
    evaluator = make(metric="loss", patience=2)
    for step in (1, 2, 3):  # the same weights: the loss never gets lower than the first evaluation's
        state.step = step
        stop = evaluator.evaluate(state, total_steps=10)
    assert record["kept"] == [1] and state.evals_since_best == 2 and stop is True
    assert [m["best/step"] for _, m in record["logged"]] == [1, 1, 1]


def test_better_weights_are_kept_and_reset_the_patience(evaluated):
    """The head set by hand, so the dev loss is known: 0.5 everywhere (log 2), then a confident wrong-ish answer
    (worse), then the dev set's own label prior (its entropy: better than log 2)."""
    import math

    make, state, record, model = evaluated
    evaluator = make(metric="loss", patience=3)
    share = float(evaluator.splits["dev"].labels.mean())
    assert 0 < share < 1 and share != 0.5

    def head(bias_of_one):
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([0.0, bias_of_one]))

    for step, bias in ((1, 0.0), (2, 8.0), (3, math.log(share / (1 - share)))):
        head(bias)
        state.step = step
        evaluator.evaluate(state, total_steps=10)
        if step == 2:
            assert state.evals_since_best == 1 and record["kept"] == [1]
    losses = [m["dev/loss"] for _, m in record["logged"]]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5) and losses[1] > losses[0] > losses[2]
    assert record["kept"] == [1, 3] and state.best_step == 3 and state.evals_since_best == 0


def test_the_dev_speed_is_measured_for_the_runs_summary(evaluated):
    make, state, _, _ = evaluated
    evaluator = make()
    assert evaluator.dev_samples_per_s is None
    evaluator.evaluate(state, total_steps=1)
    assert evaluator.dev_samples_per_s > 0


def test_only_the_main_process_writes_the_line(evaluated, caplog, monkeypatch):
    make, state, record, _ = evaluated
    evaluator = make()
    monkeypatch.setattr(type(evaluator.accelerator), "is_main_process", property(lambda self: False))
    caplog.set_level(logging.INFO, logger="afqmc_exp.training.evaluator")
    evaluator.evaluate(state, total_steps=1)
    assert record["logged"] and not [r for r in caplog.records if r.name == "afqmc_exp.training.evaluator"]


def test_an_evaluation_is_due_every_n_steps_or_else_at_each_epochs_end(evaluated):
    make = evaluated[0]
    every_3, each_epoch = make(eval_every=3), make()
    assert [s for s in range(1, 10) if every_3.due(s)] == [3, 6, 9] and not every_3.due(6, epoch_end=True)
    assert not any(each_epoch.due(s) for s in range(1, 10)) and each_epoch.due(7, epoch_end=True)
