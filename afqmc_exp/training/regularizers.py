"""The ``regularizer`` config group: what one training slice's forward and backward passes are.

* ``none``: the cross-entropy of the labels (the tutorial's loss).
* ``fgm`` (Fast Gradient Method, Miyato et al. 2017): after the normal backward pass, the word embeddings
  are moved by ``epsilon`` along this slice's gradient (normalised), the slice is run again on them, the
  adversarial loss is added to the gradients, and the embeddings are put back. One extra forward and
  backward pass per slice.
* ``pgd`` (Projected Gradient Descent, Madry et al. 2018): ``steps`` such moves of size ``alpha``, each
  projected back into the ball of radius ``epsilon``; only the last adversarial loss adds to the
  gradients (the earlier ones only steer the next move). ``steps`` extra forward and backward passes.
* ``rdrop`` (R-Drop, Liang et al. 2021): the slice is run twice in one batch (two dropout masks); the loss
  of a pair is ``(CE_1 + CE_2) / 2 + alpha * (KL(p_1 || p_2) + KL(p_2 || p_1)) / 2``, so ``alpha=0`` is the
  plain loss averaged over two dropout draws. Twice the forward and backward work.

Every extra loss is scaled like the main one (``backward`` multiplies by ``processes / pairs in the
optimizer step``, see ``trainer``), so gradient accumulation and N processes average exactly as without
a regularizer. The move's direction comes from the gradient of this slice alone: the embeddings'
gradient before the slice is subtracted, so micro-batches accumulated earlier do not steer it. With N
processes each moves along its own slice's gradient.

The reported training loss is the task loss (the cross-entropy, for R-Drop averaged over the two passes),
so curves stay comparable across regularizers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Backward = Callable[[torch.Tensor], None]  # scales a summed loss and back-propagates it


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, reduction="sum")


@dataclass
class NoRegularizer:
    """``regularizer=none``: one forward and one backward pass."""

    def __call__(self, model, inputs: dict, labels: torch.Tensor, backward: Backward, no_sync) -> torch.Tensor:
        loss = cross_entropy_sum(model(**inputs).logits, labels)
        backward(loss)
        return loss.detach()


def embedding_weight(model, name: str) -> torch.nn.Parameter:
    """The parameter whose name contains ``name`` (e.g. ``word_embeddings``), DDP wrapper or not."""
    found = [p for n, p in model.named_parameters() if name in n and p.requires_grad]
    if len(found) != 1:
        raise ValueError(f"regularizer.embedding={name!r} names {len(found)} parameters; it must name exactly one")
    return found[0]


@contextlib.contextmanager
def moved(weight: torch.nn.Parameter, delta: torch.Tensor):
    """The weight shifted by ``delta`` inside the block, exactly as it was after it."""
    backup = weight.data.clone()
    weight.data.add_(delta)
    try:
        yield
    finally:
        weight.data.copy_(backup)


def _backward_keeping_own_grad(weight, loss: torch.Tensor, backward: Backward) -> torch.Tensor:
    """``backward(loss)``, and this slice's own gradient on ``weight`` (without earlier micro-batches')."""
    before = weight.grad.detach().clone() if weight.grad is not None else None
    backward(loss)
    return weight.grad.detach() - before if before is not None else weight.grad.detach().clone()


def _step_along(grad: torch.Tensor, size: float) -> torch.Tensor:
    """A step of length ``size`` along ``grad``; none if the gradient is zero or not finite. Decided on the
    device (``torch.where``), so a GPU step makes no host sync."""
    norm = grad.norm()
    return torch.where((norm > 0) & torch.isfinite(norm), grad * (size / norm), 0.0)


@dataclass
class FGM:
    """``regularizer=fgm``: see the module docstring."""

    epsilon: float = 1.0
    embedding: str = "word_embeddings"

    def __call__(self, model, inputs: dict, labels: torch.Tensor, backward: Backward, no_sync) -> torch.Tensor:
        weight = embedding_weight(model, self.embedding)
        with no_sync():  # DDP decides at the forward pass: the adversarial pass synchronises both (one all-reduce)
            loss = cross_entropy_sum(model(**inputs).logits, labels)
            grad = _backward_keeping_own_grad(weight, loss, backward)
        with moved(weight, _step_along(grad, self.epsilon)):
            backward(cross_entropy_sum(model(**inputs).logits, labels))
        return loss.detach()


@dataclass
class PGD:
    """``regularizer=pgd``: see the module docstring."""

    epsilon: float = 1.0
    alpha: float = 0.3
    steps: int = 3
    embedding: str = "word_embeddings"

    def __call__(self, model, inputs: dict, labels: torch.Tensor, backward: Backward, no_sync) -> torch.Tensor:
        weight = embedding_weight(model, self.embedding)
        with no_sync():
            loss = cross_entropy_sum(model(**inputs).logits, labels)
            grad = _backward_keeping_own_grad(weight, loss, backward)
        delta = torch.zeros_like(weight)
        for step in range(self.steps):
            delta = self._project(delta + _step_along(grad, self.alpha))
            with moved(weight, delta):
                if step == self.steps - 1:  # only the last adversarial loss adds to the gradients
                    backward(cross_entropy_sum(model(**inputs).logits, labels))
                    break
                with no_sync():  # the others only steer the next move
                    adversarial = cross_entropy_sum(model(**inputs).logits, labels)
                    (grad,) = torch.autograd.grad(adversarial, weight)
        return loss.detach()

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta * (self.epsilon / delta.norm()).clamp(max=1.0)  # into the ball, without a host sync


@dataclass
class RDrop:
    """``regularizer=rdrop``: see the module docstring."""

    alpha: float = 1.0

    def __call__(self, model, inputs: dict, labels: torch.Tensor, backward: Backward, no_sync) -> torch.Tensor:
        doubled = {k: torch.cat([v, v]) for k, v in inputs.items()}
        first, second = model(**doubled).logits.float().chunk(2)
        task, kl = rdrop_terms(first, second, labels)
        backward(task + self.alpha * kl)
        return task.detach()


def rdrop_terms(first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed over the pairs: the mean of the two passes' cross-entropies, and the symmetric KL divergence
    between their predicted distributions, halved."""
    task = (cross_entropy_sum(first, labels) + cross_entropy_sum(second, labels)) / 2
    log_p, log_q = first.log_softmax(-1), second.log_softmax(-1)
    kl = (F.kl_div(log_q, log_p, log_target=True, reduction="sum")
          + F.kl_div(log_p, log_q, log_target=True, reduction="sum")) / 2  # fmt: skip
    return task, kl
