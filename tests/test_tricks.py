"""The tricks AFQMC practitioners tune, each against a reference computed by hand: FGM and PGD move the
embeddings, add the adversarial gradient and put the embeddings back; R-Drop's loss is its formula; the
EMA is its closed form; layer-wise learning rates; the tuned threshold maximises F1; the pruner prunes;
k folds cover each pair once; an ensemble is the mean of its members."""

import contextlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afqmc_exp.training.regularizers import FGM, PGD, NoRegularizer, RDrop, rdrop_terms


class Tiny(torch.nn.Module):
    """Embeddings averaged, then a linear head: small enough to differentiate by hand with autograd."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.word_embeddings = torch.nn.Embedding(12, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.head(self.word_embeddings(input_ids).mean(1)))


IDS = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 1]])
LABELS = torch.tensor([0, 1, 1])
SCALE, LR = 1 / 3, 0.1  # the trainer's scale: processes / pairs in the step


def loss_at(weights, delta=None):
    embedding, w, b = weights
    table = embedding if delta is None else embedding + delta
    logits = F.linear(table[IDS].mean(1), w, b)
    return F.cross_entropy(logits, LABELS, reduction="sum")


def one_step_with(regularizer):
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    before = model.word_embeddings.weight.detach().clone()
    loss = regularizer(
        model, {"input_ids": IDS}, LABELS, lambda loss: (loss * SCALE).backward(), contextlib.nullcontext
    )
    after_pass = model.word_embeddings.weight.detach().clone()
    optimizer.step()
    return model, loss, before, after_pass


def reference_weights(total_grads):
    model = Tiny()
    return [p.detach() - LR * SCALE * g for p, g in zip(model.parameters(), total_grads, strict=True)]


def unit(tensor):
    return tensor / tensor.norm()


def test_fgm_adds_the_gradient_at_the_moved_embeddings_and_puts_them_back():
    weights = [p.detach().clone().requires_grad_() for p in Tiny().parameters()]
    main = torch.autograd.grad(loss_at(weights), weights)
    delta = 0.5 * unit(main[0])
    adversarial = torch.autograd.grad(loss_at(weights, delta), weights)
    expected = reference_weights([m + a for m, a in zip(main, adversarial, strict=True)])

    model, loss, before, after_pass = one_step_with(FGM(epsilon=0.5))
    torch.testing.assert_close(after_pass, before)  # the embeddings were put back before the step
    assert loss.item() == pytest.approx(loss_at(weights).item())  # the task loss is what is reported
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want)


def test_pgd_steps_within_the_ball_and_adds_only_the_last_adversarial_gradient():
    epsilon, alpha, steps = 0.4, 0.3, 3
    weights = [p.detach().clone().requires_grad_() for p in Tiny().parameters()]
    main = torch.autograd.grad(loss_at(weights), weights)
    grad, delta = main[0], torch.zeros_like(weights[0])
    for step in range(steps):
        delta = delta + alpha * unit(grad)
        delta = delta * (epsilon / delta.norm()) if delta.norm() > epsilon else delta
        if step < steps - 1:
            (grad,) = torch.autograd.grad(loss_at(weights, delta), weights[0])
    last = torch.autograd.grad(loss_at(weights, delta), weights)
    assert delta.norm() <= epsilon + 1e-6
    expected = reference_weights([m + a for m, a in zip(main, last, strict=True)])

    model, _, before, after_pass = one_step_with(PGD(epsilon=epsilon, alpha=alpha, steps=steps))
    torch.testing.assert_close(after_pass, before)
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want)


def test_the_move_follows_this_slice_only_not_the_micro_batches_accumulated_before():
    """With gradient accumulation the embeddings' .grad already holds earlier slices' gradients."""
    model = Tiny()
    model.word_embeddings.weight.grad = torch.full_like(model.word_embeddings.weight, 100.0)  # an earlier slice
    clean = Tiny()
    for m in (model, clean):
        FGM(epsilon=0.5)(m, {"input_ids": IDS}, LABELS, lambda loss: (loss * SCALE).backward(), contextlib.nullcontext)
    torch.testing.assert_close(model.word_embeddings.weight.grad - 100.0, clean.word_embeddings.weight.grad)


def test_rdrop_loss_is_its_formula():
    torch.manual_seed(1)
    first, second = torch.randn(4, 2), torch.randn(4, 2)
    labels = torch.tensor([0, 1, 1, 0])
    task, kl = rdrop_terms(first, second, labels)
    p, q = first.softmax(-1).numpy(), second.softmax(-1).numpy()
    ce = -(np.log(p[range(4), labels]) + np.log(q[range(4), labels])) / 2
    symmetric = ((p * np.log(p / q)).sum(-1) + (q * np.log(q / p)).sum(-1)) / 2
    assert task.item() == pytest.approx(ce.sum(), rel=1e-5)
    assert kl.item() == pytest.approx(symmetric.sum(), rel=1e-5)
    # without dropout both passes agree: no divergence, and the plain loss
    model = Tiny()
    plain = NoRegularizer()(Tiny(), {"input_ids": IDS}, LABELS, lambda loss: None, contextlib.nullcontext)
    assert RDrop(alpha=4.0)(model, {"input_ids": IDS}, LABELS, lambda loss: None, contextlib.nullcontext).item() == (
        pytest.approx(plain.item())
    )


# ------------------------------------------------------------------------------------ EMA
def test_ema_after_k_steps_is_its_closed_form():
    from afqmc_exp.training.ema import WeightAverage

    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    model = torch.nn.Module()
    model.weight = weight
    decay, values = 0.9, [torch.tensor([3.0, 0.0]), torch.tensor([5.0, 1.0]), torch.tensor([-1.0, 4.0])]
    ema = WeightAverage(model, decay)
    for v in values:
        weight.data.copy_(v)
        ema.update()
    k = len(values)
    closed = decay**k * torch.tensor([1.0, -2.0]) + sum(
        (1 - decay) * decay ** (k - 1 - t) * v for t, v in enumerate(values)
    )
    torch.testing.assert_close(ema.average[0], closed)
    with ema.applied():
        torch.testing.assert_close(weight.data, closed)
    torch.testing.assert_close(weight.data, values[-1])  # the raw weights come back


# ------------------------------------------------------------------------------------ layer-wise learning rates
def test_layer_wise_rates_decay_downwards_and_the_head_has_its_own():
    from transformers import BertForSequenceClassification

    from afqmc_exp.training.optim import adamw
    from helpers import tiny_bert_config

    model = BertForSequenceClassification(tiny_bert_config(40))  # 2 layers
    optimizer = adamw(model, lr=1e-3, weight_decay=0.01, layer_decay=0.5, head_lr=5e-3)
    lr_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lr_of[p] = (group["lr"], group["weight_decay"])
    named = dict(model.named_parameters())
    assert lr_of[named["bert.encoder.layer.1.attention.self.query.weight"]] == (1e-3, 0.01)  # the top layer: lr
    assert lr_of[named["bert.encoder.layer.0.attention.self.query.weight"]] == (5e-4, 0.01)
    assert lr_of[named["bert.embeddings.word_embeddings.weight"]] == (2.5e-4, 0.01)
    assert lr_of[named["bert.encoder.layer.0.attention.self.query.bias"]] == (5e-4, 0.0)  # no decay kept
    assert lr_of[named["classifier.weight"]] == (5e-3, 0.01) and lr_of[named["bert.pooler.dense.weight"]][0] == 5e-3
    assert len(lr_of) == len(named)
    plain = adamw(model, lr=1e-3)  # off by default: today's two groups
    assert [g["lr"] for g in plain.param_groups] == [1e-3, 1e-3]


# ------------------------------------------------------------------------------------ threshold
def test_the_tuned_threshold_maximises_f1():
    from afqmc_exp.metrics import best_threshold, classification_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    threshold, f1 = best_threshold(labels, probs)
    both = np.stack([1 - probs, probs], axis=1)
    candidates = [classification_metrics(labels, both, 0.0, t)["f1"] for t in np.unique(probs)]
    assert f1 == pytest.approx(max(candidates)) and f1 > classification_metrics(labels, both, 0.0)["f1"]
    assert classification_metrics(labels, both, 0.0, threshold)["f1"] == pytest.approx(f1)


# ------------------------------------------------------------------------------------ pruning
def test_a_trial_clearly_worse_than_the_others_is_pruned(tmp_path):
    import optuna

    from afqmc_exp.training.pruning import trial_reporter

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(3):  # earlier trials: good at every step
        trial = study.ask()
        for step in (10, 20, 30):
            trial.report(0.8, step)
        study.tell(trial, 0.8)
    worse = study.ask()
    spec = {"storage": storage, "study": "s", "trial": worse.number,
            "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 15}}  # fmt: skip
    report = trial_reporter(spec, "f1")
    report(10, 0.1)  # a warm-up step: never pruned
    with pytest.raises(optuna.TrialPruned, match="pruned at step 20"):
        report(20, 0.1)
    better = study.ask()
    trial_reporter({**spec, "trial": better.number}, "f1")(20, 0.9)  # not pruned
    optuna.create_study(study_name="t", storage=storage)  # another study in the storage: the trial's is found by name
    trial_reporter({**spec, "trial": study.ask().number}, "f1")(10, 0.5)


def test_each_pruner_is_built_from_its_settings_and_the_settings_it_takes_no_are_said(caplog):
    import optuna

    from afqmc_exp.training.pruning import make_pruner

    assert isinstance(make_pruner(None), optuna.pruners.NopPruner)  # no pruner set: none
    median = make_pruner({"n_startup_trials": 2})  # the type left out: median
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_startup_trials == 2
    assert isinstance(make_pruner({"type": "hyperband"}), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner({"type": "threshold", "lower": 0.5}), optuna.pruners.ThresholdPruner)
    caplog.set_level("WARNING", logger="afqmc_exp.training.pruning")
    assert isinstance(make_pruner({"type": "none", "n_startup_trials": 5, "n_warmup_steps": 0}),
                      optuna.pruners.NopPruner)  # fmt: skip
    assert caplog.messages == ["the none pruner takes no n_startup_trials, n_warmup_steps: ignored"]
    with pytest.raises(ValueError, match=r"^pruner type 'mean': use one of median, hyperband, threshold, none$"):
        make_pruner({"type": "mean"})


# ------------------------------------------------------------------------------------ k folds
@pytest.mark.parametrize("labels", [["0", "1"], ["entailment", "neutral", "contradiction"]])
def test_k_folds_cover_each_pair_once_stratified_and_fixed_by_their_seed(tmp_path, monkeypatch, labels):
    import json

    from afqmc_exp.data import PairData
    from helpers import tiny_pretrained

    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    tokenizer = tiny_pretrained(tmp_path / "tiny").tokenizer
    classes = [int(i % 3 == 0) + int(i % 7 == 0 and len(labels) == 3) for i in range(50)]
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": labels[k]} for i, k in enumerate(classes)]
    for name, part in (("train.json", rows[:40]), ("dev.json", rows[40:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))

    def fold_splits(fold):
        return PairData(dir=str(tmp_path), test_file=None, labels=labels, folds=4, fold=fold).load(tokenizer)

    seen, per_class = [], []
    for fold in range(4):
        splits = fold_splits(fold)
        train_ids, dev_ids = {p.id for p in splits["train"].pairs()}, [p.id for p in splits["dev"].pairs()]
        assert train_ids.isdisjoint(dev_ids) and len(splits["train"]) + len(splits["dev"]) == 50
        seen += dev_ids
        per_class.append(np.bincount(splits["dev"].labels, minlength=len(labels)))
        assert [p.label for p in splits["dev"].pairs()] == splits["dev"].labels.tolist()
    assert sorted(seen) == sorted([f"train:{i}" for i in range(40)] + [f"dev:{i}" for i in range(10)])
    assert (np.ptp(np.array(per_class), axis=0) <= 1).all()  # stratified: each fold gets its share of each label
    assert [p.id for p in fold_splits(2)["dev"].pairs()] == [p.id for p in fold_splits(2)["dev"].pairs()]


# ------------------------------------------------------------------------------------ ensembles
def test_an_ensemble_scores_the_mean_of_its_members(tmp_path, capsys):
    import json

    from afqmc_exp.commands.score import predict_main
    from helpers import tiny_pretrained

    members = []
    for seed in (1, 2, 3):
        pretrained = tiny_pretrained(tmp_path / f"m{seed}", seed=seed)
        pretrained.model.save_pretrained(tmp_path / f"m{seed}")
        pretrained.tokenizer.save_pretrained(tmp_path / f"m{seed}")
        members.append(tmp_path / f"m{seed}")
    pair = ["sentence1=how do i repay my huabei", "sentence2=can i pay by card"]
    probs = []
    for member in members:
        predict_main([f"ckpt={member}", *pair, "device=cpu"])
        probs.append(json.loads(capsys.readouterr().out)["prob"])
    predict_main([f"ckpt={','.join(map(str, members))}", *pair, "device=cpu"])
    answer = json.loads(capsys.readouterr().out)
    assert answer["prob"] == pytest.approx(sum(probs) / 3, abs=2e-6)
    assert answer["label"] == str(int(answer["prob"] >= 0.5)) and not math.isnan(answer["prob"])
