"""What a training is built from: the typed objects Hydra instantiates from the config groups (:class:`Recipe`),
and the ``trainer`` group itself (:class:`TrainerConfig`).

They sit apart from the loop so that the loop's parts (the evaluator, the checkpointer) and the run can read the
same settings without importing the loop. Each has ``for_device``: the ``auto`` settings are decided once, for the
run's device, before anything is built from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..data import PairData
from ..metrics import Metric
from ..model import Pretrained
from .hardware import eval_in_bf16


@dataclass
class TrainerConfig:
    """The ``trainer`` config group (the allowed values of each option are in its annotation)."""

    epochs: int = 3
    max_steps: int | None = None  # cap on optimizer steps over the whole run (null: epochs decide)
    device: Literal["auto", "cpu"] = "auto"  # auto: a GPU when there is one
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 on CPU only with AVX512-BF16/AMX (see hardware)
    eval_precision: Literal["auto", "fp32", "bf16"] = "auto"  # periodic dev evaluations (see hardware.eval_in_bf16)
    tf32: bool = True  # TensorFloat-32 matmuls on Ampere+ GPUs; ignored on CPU
    grad_accumulation: int = 1
    max_grad_norm: float | None = 1.0  # null: no clipping
    eval_every: int | None = None  # evaluate every N optimizer steps; null: at the end of each epoch
    patience: int | None = None  # stop after this many evaluations without improvement; null: never
    metric: Metric = "accuracy"  # dev metric that picks the best weights (the configs: the task's, data.metric)
    threshold: float | Literal["tune"] = 0.5  # binary tasks: P(positive) >= threshold predicts it; tune: on dev
    ema_decay: float | None = None  # evaluate and keep an exponential moving average of the weights (see ema)
    log_every: int = 10  # optimizer steps between logged train loss/lr/speed
    checkpoint_minutes: float | None = 10.0  # wall-clock minutes between last-checkpoint saves (checked at log steps)
    checkpoint_every: int | None = None  # or every N optimizer steps; either way also at each epoch's end
    checkpoint_in_background: bool | Literal["auto"] = "auto"  # copy to host memory, write in a thread; auto: on GPUs
    keep_last_checkpoint: bool = False  # keep last_checkpoint/ after a run finishes (weights + 2x optimizer state)
    compile: Literal["no", "default", "reduce-overhead", "max-autotune"] = "no"  # torch.compile mode (see model)
    compile_scope: Literal["layers", "model"] = "layers"  # the repeated encoder layers, or the whole model
    profile_steps: int = 0  # profile this many optimizer steps (after 2 of warm-up) into <output>/profile/
    profile_skip: int = 0  # optimizer steps before the profiler starts (to see a warm loop, not the first shapes)
    progress_bar: bool = True

    def for_device(self, device: torch.device) -> TrainerConfig:
        """A copy with the ``auto`` settings decided for ``device``: the evaluations' precision (see
        ``hardware.eval_in_bf16``) and a background checkpoint writer (pays on a GPU, costs on a CPU: see
        ``checkpoint``)."""
        precision = self.eval_precision
        if precision == "auto":
            precision = "bf16" if eval_in_bf16(precision, device) else "fp32"
        background = self.checkpoint_in_background
        if background == "auto":
            background = device.type == "cuda"
        return replace(self, eval_precision=precision, checkpoint_in_background=background)


@dataclass
class Recipe:
    """What is trained, and how: the objects Hydra builds from the config groups."""

    data: PairData
    load_model: Callable[..., Pretrained]  # labels= -> the pretrained model with a head of that many outputs
    make_optimizer: Callable
    make_scheduler: Callable
    trainer: TrainerConfig
    seed: int
    regularizer: Callable | None = None  # one slice's forward and backward passes (see regularizers)

    def for_device(self, device: torch.device) -> Recipe:
        """A copy with the data's and the trainer's ``auto`` settings decided for ``device`` (once per run)."""
        return replace(self, data=self.data.for_device(device.type), trainer=self.trainer.for_device(device))
