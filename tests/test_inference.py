"""Scoring: bf16 evaluation really runs in bf16 and stays close to fp32."""

import torch

from afqmc_exp.hardware import build_accelerator
from afqmc_exp.inference import predict


def test_bf16_evaluation_really_runs_in_bf16_and_stays_close(fresh_accelerate_state):
    from transformers import BertConfig, BertForSequenceClassification

    from afqmc_exp.data import EncodedPairs, PairExample, make_loader

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=2,
        )
    )
    n = 64
    ids = [[2] + [int(t) for t in torch.randint(5, 50, (3 + i % 20,))] + [3] for i in range(n)]
    examples = [PairExample("a", "b", i % 2) for i in range(n)]
    split = EncodedPairs(examples, ids, [[0] * len(x) for x in ids], torch.tensor([e.label for e in examples]))
    accelerator = build_accelerator(device="cpu")
    loader = accelerator.prepare(make_loader(split, 0, 16, train=False))
    exact, _ = predict(model, loader, accelerator)
    fast, _ = predict(model, loader, accelerator, bf16=True)
    assert not (exact == fast).all() and abs(exact - fast).max() < 0.02  # bf16 really ran, and stayed close
    assert ((exact >= 0.5) == (fast >= 0.5)).all()
