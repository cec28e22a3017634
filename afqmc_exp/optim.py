"""The ``optim`` and ``scheduler`` config groups, as factories the trainer calls once it knows the model and steps.

Both are instantiated with ``_partial_: true``: the optimizer needs the model's parameters and the
schedule needs the number of optimizer steps, neither of which exists when the config is composed.

AdamW is torch's (``transformers.AdamW`` is gone). Biases and LayerNorm weights get no weight decay, as in
BERT's recipe. ``implementation="auto"`` picks torch's fused kernel when every parameter lives on a
device that has one (CPU and CUDA in torch >= 2.4): one kernel for the whole update instead of a Python
loop over ~100 tensors, each a kernel launch. Results equal the loop's to float rounding.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
IMPLEMENTATIONS = {"auto": {}, "fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
DECAYS = {  # the schedule after warm-up, as a function of progress in [0, 1]
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
    "constant": lambda progress: 1.0,
}


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(marker in name for marker in NO_DECAY_MARKERS) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(
    model: torch.nn.Module,
    lr: float = 2e-5,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    implementation: Literal["auto", "fused", "foreach", "loop"] = "auto",
) -> torch.optim.AdamW:
    """``implementation``: "auto" (fused where available), "fused", "foreach" or "loop" (torch's default)."""
    kwargs = IMPLEMENTATIONS[implementation]
    if implementation == "auto":
        devices = {p.device.type for p in model.parameters()}
        kwargs = {"fused": True} if devices <= {"cpu", "cuda"} else {}
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, **kwargs)


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
