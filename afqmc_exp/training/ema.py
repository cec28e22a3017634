"""An exponential moving average of the weights (``trainer.ema_decay``): after every optimizer step
``average = decay * average + (1 - decay) * weights``, kept in fp32 beside the model.

When it is on, the evaluations during training, the best weights saved to ``best_model/`` and so the final
scoring are the average's (``applied`` swaps it into the model and back); training itself goes on with the
raw weights. Its state is part of the last checkpoint, so a killed run resumes exactly.
"""

from __future__ import annotations

import contextlib

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """One step: ``average += (1 - decay) * (weights - average)`` for every tensor at once."""
        torch._foreach_lerp_(self.average, [p.float() for p in self.params], 1.0 - self.decay)

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self):
        """The model holds the average inside the block and its own weights again after it."""
        raw = [p.detach().clone() for p in self.params]
        for p, a in zip(self.params, self.average, strict=True):
            p.copy_(a)
        try:
            yield
        finally:
            for p, r in zip(self.params, raw, strict=True):
                p.copy_(r)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"ema.{i}": a for i, a in enumerate(self.average)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, a in enumerate(self.average):
            a.copy_(state[f"ema.{i}"])
