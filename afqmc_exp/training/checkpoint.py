"""The last checkpoint a killed run resumes from: when one is due (:class:`Checkpointer`), what it holds, and how
it is written (:class:`CheckpointWriter`) and read back (:func:`load_last_checkpoint`).

``last_checkpoint/`` holds the weights, the optimizer and scheduler states, every process's RNG states and
:class:`TrainState` (where training stands), enough to continue exactly where a run was killed. The best weights a
run keeps are ``best_weights``'s; both folders are swapped atomically (``files.atomic_dir``), so a kill at any
moment leaves the old complete checkpoint or the new one, and a full disk leaves the old one (``NoSpaceLeft``).

**When.** As torchtitan's ``checkpointer.save(step, last_step=...)``, the loop says where it stands and the
checkpointer decides. A save is due every ``checkpoint_every`` steps; at a logged step once ``checkpoint_minutes``
have passed since the last one; at every epoch's end when either is set; and always when a signal stops the run.
Time rather than steps by default: a step takes milliseconds on a GPU and seconds on a CPU, and what a kill may
cost is minutes of work either way. Every process must decide alike, since saving gathers from all: the clock is
read only at logged steps, where the loss is reduced across processes anyway, and the decision is reduced too.

**What.** The trainer hands the checkpointer its state once, after setting up (:meth:`Checkpointer.attach`: the
model, optimizer, scheduler, :class:`TrainState`, the loss window and the weight average); a save reads them as
they are then. Metrics are flushed to the store first (``before_save``): a kill between the two leaves steps the
store holds and a resumed run knows to skip, never steps it lacks.

**How.** On a GPU the checkpoint is written in the background: the training thread only copies the state into
pinned host memory (training then changes those tensors in place) and a thread does the serialising and the disk
writes, which for BERT-base mean about a gigabyte and would otherwise stall the GPU. One write runs at a time (the
next copy waits for it); a kill mid-write leaves the previous checkpoint. On a CPU the copy and the writer thread
compete with training for the same cores and memory bandwidth, and cost more than they save (docs/performance.md),
so there the checkpoint is written directly from the live tensors.

Nothing here executes code from the files it reads: weights are safetensors and the rest is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import logging
import random
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import NoSpaceLeft, atomic_dir, companions
from ..run_folder import RunFolder
from .recipe import TrainerConfig

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
WEIGHTS = "model.safetensors"
EXTRA_WEIGHTS = "extra.safetensors"  # tensors kept beside the model, e.g. the EMA of the weights


@dataclass
class TrainState:
    """Where training stands; with the weights, optimizer, scheduler and RNG states it is the last checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches of this epoch already trained on (each process took its slice)
    best: float | None = None
    best_step: int = 0
    evals_since_best: int = 0
    evaluated_at: int = -1
    window_loss: float = 0.0  # summed loss of the pairs trained on since the last logged step (all processes)
    window_pairs: int = 0
    pairs_seen: int = 0  # training pairs the run has stepped on, over every process and epoch (``train/pairs``)


# ------------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict:
    """Python, NumPy and torch (CPU and every GPU) RNG states, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict) -> None:
    random.setstate(states["python"])
    name, key, *rest = states["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


# ------------------------------------------------------------------------------------------ last checkpoint
class CheckpointWriter:
    """Saves the last checkpoint into ``folder``, in a background thread when ``background``.

    ``save`` is called on every process (it gathers each one's RNG states: their dropout masks differ);
    the main process copies the state to host memory and hands it to the writer thread. Call ``wait``
    before relying on the files (the trainer does at the end of training and before stopping on a signal);
    it re-raises what the writer thread raised."""

    def __init__(self, folder: Path, background: bool = True):
        self.folder, self.background = Path(folder), background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers: dict[str, torch.Tensor] = {}  # host copies, reused from one checkpoint to the next
        self._copying_from_gpu = False

    def save(self, model, optimizer, scheduler, state: TrainState, accelerator, extra: dict | None = None) -> None:
        from accelerate.utils import gather_object

        rng = gather_object([capture_rng()])
        if not accelerator.is_main_process:
            return
        self.wait()  # the buffers are free again
        weights, optimizer_state = accelerator.unwrap_model(model).state_dict(), optimizer.state_dict()
        if not self.background:  # written before training goes on: the live tensors can be written as they are
            self._write({"weights": weights, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                         "rng": rng, "state": asdict(state), "extra": extra or {}})  # fmt: skip
            return
        snapshot = {
            "extra": self._host_copy(extra or {}, "extra"),
            "weights": self._host_copy(weights, "weights"),
            "optimizer": self._host_copy(optimizer_state, "optimizer"),
            "scheduler": copy.deepcopy(scheduler.state_dict()),
            "rng": rng,
            "state": asdict(state),
        }
        if self._copying_from_gpu:
            torch.cuda.current_stream().synchronize()  # the non-blocking copies have landed
        self._thread = threading.Thread(target=self._write_catching, args=(snapshot,), name="checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, NoSpaceLeft):
                raise error
            raise RuntimeError(f"writing the checkpoint in {self.folder} failed: {error}") from error

    def _write_catching(self, snapshot: dict) -> None:
        try:
            self._write(snapshot)
        except BaseException as error:  # re-raised in the training thread by wait()
            self._error = error

    def _write(self, snapshot: dict) -> None:
        from safetensors.torch import save_file

        rest = {k: v for k, v in snapshot.items() if k not in ("weights", "extra")}
        with atomic_dir(self.folder) as staging:
            save_file({k: v.contiguous() for k, v in snapshot["weights"].items()}, staging / WEIGHTS)
            if snapshot["extra"]:
                save_file({k: v.contiguous() for k, v in snapshot["extra"].items()}, staging / EXTRA_WEIGHTS)
            torch.save(rest, staging / TRAINER_STATE)

    def _host_copy(self, value, key: str):
        """``value`` with every tensor copied into a reused host buffer (pinned, and copied without blocking,
        for GPU tensors); other values deep-copied, as training goes on changing them."""
        if isinstance(value, torch.Tensor):
            buffer = self._buffers.get(key)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = torch.empty(value.shape, dtype=value.dtype, pin_memory=value.is_cuda)
                self._buffers[key] = buffer
            self._copying_from_gpu |= value.is_cuda
            return buffer.copy_(value.detach(), non_blocking=value.is_cuda)
        if isinstance(value, dict):
            return {k: self._host_copy(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._host_copy(v, f"{key}.{i}") for i, v in enumerate(value))
        return copy.deepcopy(value)


def load_last_checkpoint(folder: Path, model, optimizer, scheduler, accelerator) -> tuple[TrainState, dict, dict]:
    """Restore weights, optimizer and scheduler; return the state, this process's RNG states to apply at the
    next step, and the extra tensors saved beside the model ({} when there were none)."""
    from safetensors.torch import load_file

    try:
        accelerator.unwrap_model(model).load_state_dict(load_file(folder / WEIGHTS))
        saved = torch.load(folder / TRAINER_STATE, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng = saved["rng"]  # one per process of the interrupted run
        extra = load_file(folder / EXTRA_WEIGHTS) if (folder / EXTRA_WEIGHTS).exists() else {}
        return TrainState(**saved["state"]), rng[accelerator.process_index % len(rng)], extra
    except Exception as error:  # (safetensors, torch and pickle raise many kinds for a cut file)
        raise CheckpointDamaged(
            f"{folder}: the last checkpoint is damaged ({str(error).splitlines()[0][:200]}); to start over in the "
            f"same run, move it aside (mv {shlex.quote(str(folder))} {shlex.quote(f'{folder}.damaged')}) and resume "
            "again"
        ) from None


class CheckpointDamaged(RuntimeError):
    """The last checkpoint cannot be read; the message says what to do (move it aside: the run starts over)."""


# ------------------------------------------------------------------------------------------ when, and what
@dataclass
class CheckpointContents:
    """What a last checkpoint holds besides the RNG states (which the writer gathers from every process), as the
    trainer hands it over once: these objects are read when a save is due."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    window: object | None = None  # the trainer's TrainingWindow: its summed loss and pairs go into ``state``
    ema: object | None = None  # a weight average (``ema.WeightAverage``), kept beside the model


class Checkpointer:
    """Saves the attached contents into ``folder`` when a save is due (see the module docstring); ``before_save``
    is called first (the run flushes its metrics there)."""

    def __init__(self, folder: Path, *, every: int | None, minutes: float | None, background: bool, accelerator,
                 before_save: Callable[[], None] = lambda: None, clock=time.monotonic,
                 resume_command: str | None = None):  # fmt: skip
        self.writer = CheckpointWriter(folder, background=background)
        self.resume_command = resume_command  # what continues from this checkpoint, said when a signal stops the run
        self.every, self.minutes = every, minutes
        self.accelerator, self.before_save = accelerator, before_save
        self.clock = clock  # seconds (a test's own clock)
        self.last_saved = clock()
        self.contents: CheckpointContents | None = None

    @classmethod
    def of_run(cls, folder: RunFolder, config: TrainerConfig, accelerator,
               before_save: Callable[[], None]) -> Checkpointer:  # fmt: skip
        """The run's checkpointer, at the cadence of its ``trainer`` config (decided for its device)."""
        return cls(folder.last_checkpoint, every=config.checkpoint_every, minutes=config.checkpoint_minutes,
                   background=config.checkpoint_in_background, accelerator=accelerator, before_save=before_save,
                   resume_command=f"python train.py {folder.resume_argument}")  # fmt: skip

    @property
    def folder(self) -> Path:
        return self.writer.folder

    def attach(self, contents: CheckpointContents) -> None:
        """What every later save holds (the trainer's state once it is set up, or restored)."""
        self.contents = contents

    def restart_clock(self) -> None:
        """Minutes count from here (training starts after the set-up, which may take minutes itself)."""
        self.last_saved = self.clock()

    def save(self, step: int, *, logged: bool = False, epoch_end: bool = False, stopping: bool = False) -> bool:
        """Save after optimizer step ``step`` if a save is due; True if one was started."""
        if not (stopping or self._due(step, logged, epoch_end)):
            return False
        self.before_save()
        held, state = self.contents, self.contents.state
        if held.window is not None:
            state.window_loss, state.window_pairs = held.window.summed_loss(self.accelerator), held.window.pairs
        extra = held.ema.state_dict() if held.ema is not None else None
        self.writer.save(held.model, held.optimizer, held.scheduler, held.state, self.accelerator, extra)
        self.last_saved = self.clock()
        return True

    def load(self, model, optimizer, scheduler) -> tuple[TrainState, dict, dict]:
        """The last checkpoint restored into these (see :func:`load_last_checkpoint`)."""
        return load_last_checkpoint(self.folder, model, optimizer, scheduler, self.accelerator)

    def exists(self) -> bool:
        """Whether a complete last checkpoint is there (in a run folder taken by ``run.taken``: no swap half done)."""
        return (self.folder / TRAINER_STATE).exists()

    def remove(self) -> None:
        """A finished run needs no resume state (it is weights plus twice their size in optimizer state)."""
        link, folder = (self.folder, self.folder.resolve()) if self.folder.is_symlink() else (None, self.folder)
        for path in (folder, *companions(folder)):
            shutil.rmtree(path, ignore_errors=True)
        if link is not None:
            link.unlink()

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
