"""Metrics against scikit-learn; optimizer groups and schedules."""

import math

import numpy as np
import pytest
import torch

from afqmc_exp.metrics import classification_metrics, roc_auc
from afqmc_exp.training.optim import adamw, parameter_groups, schedule


def binary(prob_positive) -> np.ndarray:
    prob_positive = np.asarray(prob_positive, dtype=np.float64)
    return np.stack([1 - prob_positive, prob_positive], axis=1)


@pytest.mark.parametrize("threshold", [0.5, 0.37])
def test_binary_metrics_match_scikit_learn(threshold):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    probs = np.round(np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1), 2)  # rounding makes ties
    got = classification_metrics(labels, binary(probs), loss=0.5, threshold=threshold)
    guess = probs >= threshold
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, guess))
    assert got["f1"] == pytest.approx(f1_score(labels, guess)) == got["f1_1"]
    assert got["f1_0"] == pytest.approx(f1_score(labels, guess, pos_label=0))
    assert got["macro_f1"] == pytest.approx(f1_score(labels, guess, average="macro"))
    assert got["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert got["loss"] == 0.5


def test_three_class_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    from afqmc_exp.metrics import log_loss as our_log_loss

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 400)
    probs = rng.dirichlet(np.ones(3), size=400) + np.eye(3)[labels] * rng.random((400, 1))
    probs /= probs.sum(axis=1, keepdims=True)
    names = ["entailment", "neutral", "contradiction"]
    got = classification_metrics(labels, probs, loss=0.9, names=names)
    guess = probs.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, guess))
    assert got["macro_f1"] == pytest.approx(f1_score(labels, guess, average="macro"))
    per_class = f1_score(labels, guess, average=None)
    assert [got[f"f1_{name}"] for name in names] == pytest.approx(list(per_class))
    assert "f1" not in got and "auc" not in got  # binary only
    assert our_log_loss(labels, probs) == pytest.approx(log_loss(labels, probs))
    never_predicted = classification_metrics(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 1, 1]], 0.0)
    assert never_predicted["macro_f1"] == pytest.approx(f1_score([0, 1, 2, 2], [0, 1, 1, 1], average="macro"))


def test_the_tuned_threshold_may_predict_every_pair_positive_and_breaks_ties_towards_one_half():
    from afqmc_exp.metrics import best_threshold, log_loss

    assert best_threshold([1, 1, 1], [0.9, 0.5, 0.2]) == (0.2, 1.0)  # the lowest probability: every pair positive
    threshold, f1 = best_threshold([1, 0, 0, 1], [0.99, 0.6, 0.4, 0.2])  # 0.99 and 0.2 both give F1 2/3
    assert threshold == 0.2 and f1 == pytest.approx(2 / 3)
    assert log_loss([1, 0], [[0.0, 1.0], [0.0, 1.0]]) == pytest.approx(-np.log(1e-12) / 2)  # finite, not inf


def test_majority_answer_scores_accuracy_but_zero_f1():
    labels = np.array([0] * 69 + [1] * 31)
    got = classification_metrics(labels, binary(np.zeros(100)), loss=0.6)
    assert got["accuracy"] == pytest.approx(0.69) and got["f1"] == 0.0 and got["auc"] == 0.5


def test_auc_is_nan_with_one_class():
    assert math.isnan(roc_auc(np.zeros(5), np.arange(5)))


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )


def test_no_weight_decay_on_bias_and_layernorm():
    model = tiny_bert()
    decay, no_decay = parameter_groups(model, 0.01, lr=2e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in (names[id(p)] for p in decay["params"]))
    assert {names[id(p)] for p in no_decay["params"]} >= {"classifier.bias", "bert.embeddings.LayerNorm.weight"}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("implementation", ["auto", "fused", "foreach", "loop"])
def test_every_adamw_implementation_takes_the_same_step(implementation):
    torch.manual_seed(0)
    reference, model = tiny_bert(), tiny_bert()
    model.load_state_dict(reference.state_dict())
    inputs = torch.randint(0, 50, (4, 6))
    for m, impl in ((reference, "loop"), (model, implementation)):
        optimizer = adamw(m, lr=1e-2, implementation=impl)
        m.train(False)
        m(input_ids=inputs, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        optimizer.step()
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def lrs(name, warmup_ratio, total=10):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = schedule(optimizer, total, name=name, warmup_ratio=warmup_ratio)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        optimizer.step()
        sched.step()
    return out


def test_schedules():
    linear = lrs("linear", 0.2)  # 2 warm-up steps of 10, then down to 0 over the 8 left
    assert linear == pytest.approx([1 / 3, 2 / 3, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    cosine = lrs("cosine", 0.0)
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and cosine[-1] < 0.05
    assert lrs("constant", 0.0) == [1.0] * 10


def test_every_metric_the_trainer_may_pick_has_a_direction():
    import typing

    from afqmc_exp.metrics import GREATER_IS_BETTER, Metric

    assert set(GREATER_IS_BETTER) == set(typing.get_args(Metric))


def test_result_json_writes_undefined_metrics_as_null():
    import json
    import math

    from afqmc_exp.training.outputs import json_dumps

    text = json_dumps({"auc": float("nan"), "speed": {"x": math.inf}, "values": [1.0, float("nan")]})
    assert json.loads(text) == {"auc": None, "speed": {"x": None}, "values": [1.0, None]}


def test_a_dev_set_with_one_label_refuses_auc_and_warns_otherwise(caplog, tmp_path):
    from afqmc_exp.data import CheckedFile, DataError, ReadSpec
    from afqmc_exp.data.formats import FileStats
    from afqmc_exp.training.run import check_dev_labels

    def dev(counts):
        return CheckedFile(tmp_path / "dev.json", "0", FileStats(sum(counts), True, counts), ReadSpec(), True)

    with pytest.raises(DataError, match="dev set holds no pair labelled '1': AUC is undefined"):
        check_dev_labels(dev([2, 0]), "auc", ["0", "1"])
    check_dev_labels(dev([2, 0]), "f1", ["0", "1"])
    assert "dev AUC is undefined" in caplog.text
    caplog.clear()
    check_dev_labels(dev([2, 1]), "auc", ["0", "1"])
    assert caplog.text == ""
    check_dev_labels(dev([2, 1, 0]), "accuracy", ["entailment", "neutral", "contradiction"])
    assert "'contradiction'" in caplog.text and "macro-F1 counts them only where they are predicted" in caplog.text


def test_the_configs_lr_betas_and_eps_reach_the_optimizer():
    model = torch.nn.Linear(2, 2)
    optimizer = adamw(model, lr=3e-4, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05, implementation="loop")
    for group in optimizer.param_groups:
        assert (group["lr"], group["betas"], group["eps"]) == (3e-4, (0.8, 0.95), 1e-6)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.05]  # the bias: none
