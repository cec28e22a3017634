"""The trainer's checkpointer: when the last checkpoint is due, and saving it.

As torchtitan's ``checkpointer.save(step, last_step=...)``, the loop says where it stands and the checkpointer
decides. A save is due every ``checkpoint_every`` steps; at a logged step once ``checkpoint_minutes`` have passed
since the last one; at every epoch's end when either is set; and always when a signal stops the run. Time rather
than steps by default: a step takes milliseconds on a GPU and seconds on a CPU, and what a kill may cost is
minutes of work either way. Every process must decide alike, since saving gathers from all: the clock is read
only at logged steps, where the loss is reduced across processes anyway, and the decision is reduced too.

What is saved comes from ``contents()`` at the moment of saving (the trainer flushes its metrics there first),
and how it is written, in the background on a GPU, is ``checkpoint.CheckpointWriter``'s business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointWriter, TrainState, load_last_checkpoint


@dataclass
class CheckpointContents:
    """What a last checkpoint holds besides the RNG states (which the writer gathers from every process)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    extra: dict | None = None  # tensors kept beside the model, e.g. the EMA of the weights


class Checkpointer:
    """Saves ``contents()`` into ``folder`` when a save is due (see the module docstring)."""

    def __init__(self, folder: Path, *, every: int | None, minutes: float | None, background: bool,
                 accelerator, contents: Callable[[], CheckpointContents], clock=time.monotonic):  # fmt: skip
        self.writer = CheckpointWriter(folder, background=background)
        self.every, self.minutes = every, minutes
        self.accelerator, self.contents = accelerator, contents
        self.clock = clock  # seconds (a test's own clock)
        self.last_saved = clock()

    def restart_clock(self) -> None:
        """Minutes count from here (training starts after the set-up, which may take minutes itself)."""
        self.last_saved = self.clock()

    def save(self, step: int, *, logged: bool = False, epoch_end: bool = False, stopping: bool = False) -> bool:
        """Save after optimizer step ``step`` if a save is due; True if one was started."""
        if not (stopping or self._due(step, logged, epoch_end)):
            return False
        contents = self.contents()
        self.writer.save(contents.model, contents.optimizer, contents.scheduler, contents.state, self.accelerator,
                         contents.extra)  # fmt: skip
        self.last_saved = self.clock()
        return True

    def load(self, model, optimizer, scheduler) -> tuple[TrainState, dict, dict]:
        """The last checkpoint restored into these (see ``checkpoint.load_last_checkpoint``)."""
        return load_last_checkpoint(self.writer.folder, model, optimizer, scheduler, self.accelerator)

    def wait(self) -> None:
        """Until the checkpoint being written is complete; raises what writing it raised."""
        self.writer.wait()

    def _due(self, step: int, logged: bool, epoch_end: bool) -> bool:
        if epoch_end:
            return bool(self.every) or self.minutes is not None
        if self.every and step % self.every == 0:
            return True
        if self.minutes is None or not logged:
            return False
        due = self.clock() - self.last_saved >= 60 * self.minutes
        if self.accelerator.num_processes > 1:
            flag = torch.tensor(float(due), device=self.accelerator.device)
            due = self.accelerator.reduce(flag, reduction="sum").item() > 0
        return due
