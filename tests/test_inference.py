"""Scoring: bf16 evaluation really runs in bf16 and stays close to fp32; the model's inputs."""

import numpy as np
import pytest
import torch

from afqmc_exp.model import enable_cls_only_last_layer
from afqmc_exp.training.hardware import build_accelerator
from afqmc_exp.training.inference import model_inputs, predict
from helpers import tiny_bert_config


def test_bf16_evaluation_really_runs_in_bf16_and_stays_close(fresh_accelerate_state):
    from transformers import BertConfig, BertForSequenceClassification

    from afqmc_exp.data import make_loader
    from helpers import token_split

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
    split = token_split(ids)
    accelerator = build_accelerator(device="cpu")
    loader = accelerator.prepare(make_loader(split, 0, 16, train=False))
    exact, _ = predict(model, loader, accelerator)
    fast, _ = predict(model, loader, accelerator, bf16=True)
    assert not (exact == fast).all() and abs(exact - fast).max() < 0.02  # bf16 really ran, and stayed close
    assert ((exact[:, 1] >= 0.5) == (fast[:, 1] >= 0.5)).all() and np.allclose(exact.sum(axis=1), 1)


@pytest.mark.parametrize("cls_only", [False, True])
def test_the_ready_made_attention_mask_gives_the_same_logits_and_gradients(cls_only):
    """model_inputs hands SDPA a 4-D mask (no host sync in transformers' mask building): the same
    attention as the 2-D mask, padding masked, for the full and the [CLS]-only last layer."""
    from transformers import BertForSequenceClassification
    from transformers.masking_utils import create_bidirectional_mask

    torch.manual_seed(0)
    models = [BertForSequenceClassification(tiny_bert_config(60, dropout=0.0)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    if cls_only:
        for model in models:
            enable_cls_only_last_layer(model)
    assert models[0].config._attn_implementation == "sdpa"
    ids = torch.randint(5, 60, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[3, 3:] = 0, 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    ready = model_inputs(batch, models[1])
    built = create_bidirectional_mask(  # what transformers itself builds from the 2-D mask
        config=models[0].config, inputs_embeds=torch.zeros(4, 9, 32), attention_mask=mask
    )
    assert torch.equal(ready["attention_mask"], built) and ready["attention_mask"].is_contiguous()
    logits = [model(**inputs).logits for model, inputs in zip(models, (batch, ready), strict=True)]
    torch.testing.assert_close(logits[1], logits[0])
    for out in logits:
        out.sum().backward()
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    shorter = {k: v[3:4, :3] for k, v in batch.items()}  # padding changes nothing
    torch.testing.assert_close(models[1](**model_inputs(shorter, models[1])).logits, logits[1][3:4])


def test_other_attention_implementations_get_the_usual_mask():
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config(60, attn_implementation="eager"))
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "token_type_ids": torch.zeros(2, 3, dtype=torch.long)}  # fmt: skip
    assert model_inputs(batch, model)["attention_mask"].shape == (2, 3)


def test_prediction_lines_give_the_id_the_answer_and_on_dev_the_pair_and_its_gold_label():
    import json

    from afqmc_exp.data import Pair
    from afqmc_exp.training.inference import prediction_lines

    pairs = [Pair("花呗怎么还款", "花呗如何还钱", 1, id=7), Pair("a", "b", None, id=8)]
    probs = np.array([[0.2, 0.8], [0.7, 0.3]])
    plain = [json.loads(line) for line in prediction_lines(pairs, probs, ["0", "1"], threshold=0.75)]
    assert [(row["id"], row["label"]) for row in plain] == [(7, "1"), (8, "0")] and "sentence1" not in plain[0]
    lines = list(prediction_lines(pairs, probs, ["0", "1"], threshold=0.9, with_sentences=True))
    assert "花呗怎么还款" in lines[0]  # readable, not \\u escapes
    rows = [json.loads(line) for line in lines]
    assert rows[0]["label"] == "0" and (rows[0]["sentence1"], rows[0]["sentence2"]) == ("花呗怎么还款", "花呗如何还钱")
    assert [row["gold"] for row in rows] == ["1", None]
