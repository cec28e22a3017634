"""The ``optim`` and ``scheduler`` config groups, as factories the trainer calls once it knows the model and steps.

Both are instantiated with ``_partial_: true``: the optimizer needs the model's parameters and the
schedule needs the number of optimizer steps, neither of which exists when the config is composed.

AdamW is torch's (``transformers.AdamW`` is gone). Biases and LayerNorm weights get no weight decay, as in
BERT's recipe. ``layer_decay`` (layer-wise learning-rate decay): the top encoder layer learns at ``lr``,
each layer below at ``layer_decay`` times the one above, the embeddings lowest; ``head_lr`` is the rate of
what sits above the encoder (pooler, classifier: new weights often want more), ``lr`` if unset. Both off
by default, which gives today's two groups. ``implementation="auto"`` picks torch's fused kernel when
every parameter lives on a device that has one (CPU and CUDA in torch >= 2.4): one kernel for the whole
update instead of a Python loop over ~100 tensors, each a kernel launch. Results equal the loop's to
float rounding.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch

NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
IMPLEMENTATIONS = {"auto": {}, "fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
DECAYS = {  # the schedule after warm-up, as a function of progress in [0, 1]
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
    "constant": lambda progress: 1.0,
}


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, layer_decay: float | None = None,
    head_lr: float | None = None,
) -> list[dict]:  # fmt: skip
    """One group per (learning rate, weight decay); biases and norms get no weight decay."""
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0)
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = any(marker in name for marker in NO_DECAY_MARKERS)
        key = (lr_of(name, lr, layers, layer_decay, head_lr), 0.0 if no_decay else weight_decay)
        groups.setdefault(key, []).append(param)
    if layer_decay is None and head_lr is None:  # today's order: decayed weights first
        groups = dict(sorted(groups.items(), key=lambda item: item[0][1] == 0.0))
    return [{"params": params, "lr": group_lr, "weight_decay": wd} for (group_lr, wd), params in groups.items()]


def lr_of(name: str, lr: float, layers: int, layer_decay: float | None, head_lr: float | None) -> float:
    """Encoder layer i (of ``layers``) learns at ``lr * layer_decay ** (layers - 1 - i)``, the embeddings one
    step lower, anything above the encoder at ``head_lr``."""
    match = re.search(r"\.layer\.(\d+)\.", name)
    if match:
        depth = int(match.group(1)) + 1
    elif "embeddings" in name:
        depth = 0
    else:
        return head_lr or lr
    return lr * (layer_decay or 1.0) ** (layers - depth)


def adamw(
    model: torch.nn.Module,
    lr: float = 2e-5,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    implementation: Literal["auto", "fused", "foreach", "loop"] = "auto",
    layer_decay: float | None = None,
    head_lr: float | None = None,
) -> torch.optim.AdamW:
    """``implementation``: "auto" (fused where available), "fused", "foreach" or "loop" (torch's default)."""
    kwargs = IMPLEMENTATIONS[implementation]
    if implementation == "auto":
        devices = {p.device.type for p in model.parameters()}
        kwargs = {"fused": True} if devices <= {"cpu", "cuda"} else {}
    groups = parameter_groups(model, weight_decay, lr, layer_decay, head_lr)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)


def schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    name: Literal["linear", "cosine", "constant"] = "linear",
    warmup_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm up linearly over ``warmup_ratio`` of the steps, then decay: linear to 0, cosine to 0, or constant."""
    warmup, decay = int(round(warmup_ratio * total_steps)), DECAYS[name]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return decay((step - warmup) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
