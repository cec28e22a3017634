"""Scoring pairs with a classifier: class probabilities, metrics, answers and prediction lines.

It serves the trainer's evaluations as much as ``evaluate.py`` and ``predict.py``. Evaluation runs under
``torch.inference_mode`` over length-sorted batches (see ``data.batching``) and maps the answers back to the
split's order; with several processes each scores a slice and the results are gathered.

Every way of predicting answers in one format (``answers.answer``): the label as the data writes it, every
label's probability and, for a binary task, its positive label's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..answers import answer
from ..data import Pair, Split, make_loader
from ..metrics import classification_metrics

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def model_inputs(batch: dict, model) -> dict:
    """What the model is called with. Under SDPA attention the padding mask goes in ready-made: given the
    usual 2-D mask, transformers first asks the host whether any position is padded (``mask.all()``), which
    makes the CPU wait for the GPU once per forward pass and so keeps it from queueing the next kernels. A
    4-D mask is used as it is; this one is the (batch, 1, width, width) boolean mask transformers builds for
    a padded batch, so the attention kernels and the logits are the same (tested), and a training step
    makes no host sync at all (tested)."""
    inputs = {k: batch[k] for k in MODEL_INPUTS}
    config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model
    if getattr(config, "_attn_implementation", None) == "sdpa":
        mask, width = inputs["attention_mask"].bool(), inputs["attention_mask"].shape[-1]
        inputs["attention_mask"] = mask[:, None, None, :].expand(-1, 1, width, width).contiguous()
    return inputs


def predict(model: torch.nn.Module, loader, accelerator, bf16: bool = False) -> tuple[np.ndarray, float]:
    """Class probabilities ``(pairs, classes)`` for every pair of ``loader``'s split, in the split's order, and
    the mean loss (NaN when the split is unlabelled), computed under bf16 autocast if ``bf16``. Gathers
    across processes."""
    model.eval()
    indices, probs, losses = [], [], []
    with torch.inference_mode(), torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            logits = model(**model_inputs(batch, model)).logits.float()
            if "labels" in batch:
                losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none"))
            gathered = accelerator.gather_for_metrics((batch["index"], logits.softmax(-1)))
            indices.append(gathered[0])  # kept on the device: copying each batch out would wait for it
            probs.append(gathered[1])
    model.train()
    order = torch.cat(indices).cpu().numpy()
    stacked = torch.cat(probs).double().cpu().numpy()
    in_order = np.empty_like(stacked)
    in_order[order] = stacked
    if losses:
        loss = accelerator.gather_for_metrics(torch.cat(losses)).double().mean().item()
    else:
        loss = float("nan")
    return in_order, loss


def evaluate(model: torch.nn.Module, loader, split: Split, accelerator, names: Sequence[str], bf16: bool = False,
             threshold: float = 0.5) -> tuple[dict[str, float], np.ndarray]:  # fmt: skip
    """The metrics of ``model`` on a labelled split, and its class probabilities in the split's order."""
    probs, loss = predict(model, loader, accelerator, bf16)
    return classification_metrics(split.labels, probs, loss, threshold, names), probs


def score(pretrained, split: Split, batch_size: int, accelerator, names: Sequence[str], pad_to_multiple_of: int = 1,
          threshold: float = 0.5) -> tuple[np.ndarray, float, dict[str, float] | None]:  # fmt: skip
    """Class probabilities for a tokenized split, the mean loss and, if it is labelled, its metrics."""
    loader = make_loader(
        split, pretrained.tokenizer.pad_token_id, batch_size, train=False, pad_to_multiple_of=pad_to_multiple_of
    )
    model, loader = accelerator.prepare(pretrained.model, loader)
    probs, loss = predict(model, loader, accelerator)
    labels = split.labels
    metrics = classification_metrics(labels, probs, loss, threshold, names) if labels is not None else None
    return probs, loss, metrics


def prediction_lines(pairs: Iterable[Pair], probs: np.ndarray, names: Sequence[str], threshold: float = 0.5,
                     with_sentences: bool = False) -> Iterable[str]:  # fmt: skip
    """JSON lines ``{"id", "label", "prob", "probs"}`` (CLUE's submission fields first), optionally with the
    pair and its gold label."""
    for pair, row in zip(pairs, probs, strict=True):
        line = {"id": pair.id, **answer(row, names, threshold)}
        if with_sentences:
            gold = names[pair.label] if pair.label is not None else None
            line.update(sentence1=pair.text_a, sentence2=pair.text_b, gold=gold)
        yield json.dumps(line, ensure_ascii=False) + "\n"
