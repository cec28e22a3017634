"""The loop's arithmetic for sharded batches and gradient accumulation."""

import torch

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
