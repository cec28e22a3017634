"""The loop: arithmetic for sharded batches and gradient accumulation, and the precision guard."""

import torch

from afqmc_exp import loop
from afqmc_exp.data import LengthGroupedBatchSampler
from afqmc_exp.loop import optimizer_steps


def test_optimizer_steps_group_batches_within_an_epoch():
    assert optimizer_steps([16, 16, 16, 5], 1) == [(16, True), (16, True), (16, True), (5, True)]
    assert optimizer_steps([16, 16, 16, 5], 2) == [(32, False), (32, True), (21, False), (21, True)]
    assert optimizer_steps([16, 16, 5], 2) == [(32, False), (32, True), (5, True)]  # the epoch ends a step


def test_scaled_slice_losses_give_the_gradient_of_the_mean_over_each_step():
    """What DDP computes from the loop's per-slice losses (accumulated over micro-batches, averaged over
    processes) is exactly the gradient of one process's mean loss over the step's pairs, also when the
    slices are uneven (a 5-pair batch on 2 processes) and a step holds batches of different sizes."""
    torch.manual_seed(0)
    weight = torch.randn(3, 2, requires_grad=True)
    sizes, processes, accumulation = [16, 16, 16, 5], 2, 2
    features, labels = torch.randn(sum(sizes), 3), torch.randint(0, 2, (sum(sizes),))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = [list(range(start, start + size)) for start, size in zip(starts, sizes)]

    def loss_sum(rows):
        return torch.nn.functional.cross_entropy(features[rows] @ weight, labels[rows], reduction="sum")

    plan, position = optimizer_steps(sizes, accumulation), 0
    while position < len(batches):
        group = []
        while True:
            group.append(position)
            position += 1
            if plan[position - 1][1]:
                break
        rows = sum((batches[i] for i in group), [])
        (reference,) = torch.autograd.grad(torch.nn.functional.cross_entropy(features[rows] @ weight, labels[rows]),
                                           weight)
        per_process = []
        for rank in range(processes):
            sampler = LengthGroupedBatchSampler([1] * len(labels), 16, seed=0, num_shards=processes, shard=rank)
            grad = torch.zeros_like(weight)
            for i in group:  # this process's slice of each micro-batch, as the sampler cuts it
                part = sampler.shard_of(batches[i])
                grad += torch.autograd.grad(loss_sum(part) * (processes / plan[i][0]), weight)[0]
            per_process.append(grad)
        assert torch.allclose(torch.stack(per_process).mean(0), reference, atol=1e-6)


def test_mixed_precision_that_would_not_pay_on_this_cpu_is_named(fresh_accelerate_state, caplog, monkeypatch):
    from accelerate.state import AcceleratorState

    loop.build_accelerator(loop.TrainerConfig(device="cpu", mixed_precision="fp16"))
    assert "fp16 needs a GPU: this CPU run computes in fp32" in caplog.text
    for native, warned in ((False, True), (True, False)):
        AcceleratorState._reset_state(reset_partial_state=True)
        caplog.clear()
        monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
        assert loop.build_accelerator(loop.TrainerConfig(device="cpu", mixed_precision="bf16")).mixed_precision == "bf16"
        assert ("bf16 is emulated" in caplog.text) is warned


def test_eval_precision_auto_uses_bf16_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
        assert loop.eval_in_bf16(loop.TrainerConfig(), cpu) is native
        assert loop.eval_in_bf16(loop.TrainerConfig(eval_precision="fp32"), cpu) is False
        assert loop.eval_in_bf16(loop.TrainerConfig(eval_precision="bf16"), cpu) is True


def test_bf16_evaluation_really_runs_in_bf16_and_stays_close(fresh_accelerate_state):
    from transformers import BertConfig, BertForSequenceClassification

    from afqmc_exp.data import EncodedPairs, PairExample, make_loader

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=128, num_labels=2))
    n = 64
    ids = [[2] + [int(t) for t in torch.randint(5, 50, (3 + i % 20,))] + [3] for i in range(n)]
    examples = [PairExample("a", "b", i % 2) for i in range(n)]
    split = EncodedPairs(examples, ids, [[0] * len(x) for x in ids], torch.tensor([e.label for e in examples]))
    accelerator = loop.build_accelerator(loop.TrainerConfig(device="cpu"))
    loader = accelerator.prepare(make_loader(split, 0, 16, train=False))
    exact, _ = loop.predict(model, loader, accelerator)
    fast, _ = loop.predict(model, loader, accelerator, bf16=True)
    assert not (exact == fast).all() and abs(exact - fast).max() < 0.02  # bf16 really ran, and stayed close
    assert ((exact >= 0.5) == (fast >= 0.5)).all()
