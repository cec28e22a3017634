"""Scoring pairs with a classifier: probabilities, metrics and CLUE prediction files.

It serves the trainer's evaluations as much as ``evaluate.py`` and ``predict.py``. Evaluation runs under
``torch.inference_mode`` over length-sorted batches (see ``data.make_loader``) and maps the answers back
to file order; with several processes each scores a slice and the results are gathered.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .data import EncodedPairs, PairExample, encode_pairs, make_loader
from .metrics import classification_metrics

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
    """Probabilities of label 1 for every pair of ``loader``'s split, in file order, and the mean loss
    (NaN when the split is unlabelled), computed under bf16 autocast if ``bf16``. Gathers across processes."""
    model.eval()
    indices, probs, losses = [], [], []
    with torch.inference_mode(), torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            logits = model(**model_inputs(batch, model)).logits.float()
            if "labels" in batch:
                losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none"))
            gathered = accelerator.gather_for_metrics((batch["index"], logits.softmax(-1)[:, 1]))
            indices.append(gathered[0])  # kept on the device: copying each batch out would wait for it
            probs.append(gathered[1])
    model.train()
    order = torch.cat(indices).cpu().numpy()
    prob_same = np.empty(len(order), dtype=np.float64)
    prob_same[order] = torch.cat(probs).double().cpu().numpy()
    if losses:
        loss = accelerator.gather_for_metrics(torch.cat(losses)).double().mean().item()
    else:
        loss = float("nan")
    return prob_same, loss


def evaluate(
    model: torch.nn.Module, loader, split: EncodedPairs, accelerator, bf16: bool = False, threshold: float = 0.5
) -> tuple[dict[str, float], np.ndarray]:
    """Loss, accuracy, F1 and AUC of ``model`` on a labelled split, and the probabilities in file order."""
    prob_same, loss = predict(model, loader, accelerator, bf16)
    return classification_metrics(split.labels.numpy(), prob_same, loss, threshold), prob_same


def score(
    pretrained,
    examples: list[PairExample],
    max_length: int,
    batch_size: int,
    accelerator,
    pad_to_multiple_of: int = 1,
    threshold: float = 0.5,
) -> tuple[np.ndarray, dict[str, float] | None]:
    """Probabilities of "same meaning" for ``examples`` (file order) and, if labelled, their metrics."""
    split = encode_pairs(examples, pretrained.tokenizer, max_length)
    loader = make_loader(
        split, pretrained.tokenizer.pad_token_id, batch_size, train=False, pad_to_multiple_of=pad_to_multiple_of
    )
    model, loader = accelerator.prepare(pretrained.model, loader)
    prob_same, loss = predict(model, loader, accelerator)
    labels = split.labels
    metrics = classification_metrics(labels.numpy(), prob_same, loss, threshold) if labels is not None else None
    return prob_same, metrics


def write_predictions(
    path: Path, examples: list[PairExample], prob_same: np.ndarray, with_sentences: bool = False,
    threshold: float = 0.5,
) -> None:  # fmt: skip
    """CLUE submission lines ``{"id", "label": "0"|"1"}`` plus the probability (and optionally the pair)."""
    with open(path, "w", encoding="utf-8") as out:
        for example, prob in zip(examples, prob_same, strict=True):
            row = {"id": example.id, "label": str(int(prob >= threshold)), "prob": round(float(prob), 6)}
            if with_sentences:
                row.update(sentence1=example.sentence1, sentence2=example.sentence2, gold=example.label)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
