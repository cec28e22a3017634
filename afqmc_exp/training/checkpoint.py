"""Checkpoint files: the *last checkpoint* a killed run resumes from, and the *best model* users keep.

A run's output folder holds

* ``best_model/``: a ``save_pretrained`` folder (safetensors weights, config, tokenizer) plus
  ``afqmc_exp.json``, the facts needed to use the weights as they were trained (max_length, batch size,
  metric, step; ``weights_facts`` owns that file). Anyone's
  ``AutoModelForSequenceClassification.from_pretrained`` loads it.
* ``last_checkpoint/``: the weights, the optimizer and scheduler states, every process's RNG states and
  :class:`TrainState` (where training stands), enough to continue exactly where a run was killed.

**Swaps are atomic.** Both folders are written into a staging folder that then takes the old one's place.
On Linux the two folders are exchanged by one ``renameat2(RENAME_EXCHANGE)`` call, so a kill at any moment
leaves the old complete folder or the new one. Where that call is missing (other systems, some network
file systems) the swap is two renames; a kill between them leaves the folder missing with both copies
beside it, and :func:`recover` (run before every read and write here) puts the newer one back. A resumed
run therefore never restarts from zero when a checkpoint existed. A write that fails (a full disk) removes
its staging folder and leaves the old version in place: :class:`NoSpaceLeft` says so in one line. A folder
that is a symlink (weights kept on another disk) is swapped where it points; the link stays.

**On a GPU the last checkpoint is written in the background** (:class:`CheckpointWriter`): the training
thread only copies the state into pinned host memory (training then changes those tensors in place) and a
thread does the serialising and the disk writes, which for BERT-base mean about a gigabyte and would
otherwise stall the GPU. One write runs at a time (the next copy waits for it); a kill mid-write leaves
the previous checkpoint. On a CPU the copy and the writer thread compete with training for the same
cores and memory bandwidth, and cost more than they save (docs/performance.md), so there the trainer
writes directly from the live tensors.

Nothing here executes code from the files it reads: weights are safetensors and the rest is read with
``torch.load(weights_only=True)``. Other modules ask this one (``has_last_checkpoint``,
``remove_last_checkpoint``, ``read_meta``) instead of knowing the file names.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import errno
import logging
import os
import random
import shlex
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import follow_umask, replaced_file
from ..run_folder import RunFolder
from ..weights_facts import FILE as FACTS_FILE
from ..weights_facts import facts_text, read_facts

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


# ------------------------------------------------------------------------------------------ folders
def _companions(target: Path) -> tuple[Path, Path]:
    """The staging folder a new version is written into, and where the old one waits during a two-rename swap."""
    return target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")


def _renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (AttributeError, OSError):
        return None


_RENAMEAT2 = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if _RENAMEAT2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _between_renames(target: Path) -> None:
    """Called between the two renames of a non-atomic swap; tests replace it to kill the process there."""


def recover(target: Path) -> None:
    """Put ``target`` back after a kill between the two renames of a swap: then it is missing, the old
    version waits in ``.NAME.old`` and the complete new one in ``.NAME.tmp`` (the first rename only happens
    after the new version is written). The newer one is restored. Nothing to do in any other state: a
    missing target without ``.old`` means the first version was never finished."""
    target = Path(target).resolve() if Path(target).is_symlink() else Path(target)
    staging, retired = _companions(target)
    if target.exists() or not retired.exists():
        return
    try:
        os.replace(staging if staging.exists() else retired, target)
        log.warning("%s: restored after an interrupted swap", target)
    except FileNotFoundError:  # another process of the same run restored it first
        pass


class NoSpaceLeft(RuntimeError):
    """The disk filled while a checkpoint or the best weights were written; the previous version is intact."""


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a full disk or quota: safetensors and torch.save re-raise the
    OSError as their own error types, with its text."""
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in ("No space left on device", "os error 28", "Disk quota exceeded")):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a staging folder; on success it replaces ``target`` atomically (see the module docstring)."""
    target = Path(target).resolve() if Path(target).is_symlink() else Path(target)
    recover(target)
    staging, retired = _companions(target)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException as error:  # (a kill or Ctrl-C too: no half-written copy is left, and it is raised again)
        shutil.rmtree(staging, ignore_errors=True)  # a partial copy would only fill the disk further
        if disk_full(error):
            kept = f"the previous {target.name} is intact" if target.exists() else f"no earlier {target.name} existed"
            raise NoSpaceLeft(f"no space left on the device of {target} while writing it; {kept}. Free some space, "
                              "then resume the run") from None  # fmt: skip
        raise
    follow_umask(staging)  # safetensors writes its files for their owner only; a run folder's are the umask's
    if not target.exists():
        os.replace(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now the old version
    else:
        os.replace(target, retired)
        _between_renames(target)
        os.replace(staging, target)
        shutil.rmtree(retired)


def has_last_checkpoint(output_dir: Path) -> bool:
    folder = RunFolder(output_dir).last_checkpoint
    recover(folder)
    return (folder / TRAINER_STATE).exists()


def remove_last_checkpoint(output_dir: Path) -> None:
    """A finished run needs no resume state (it is weights plus twice their size in optimizer state)."""
    folder = RunFolder(output_dir).last_checkpoint
    link, folder = (folder, folder.resolve()) if folder.is_symlink() else (None, folder)
    for path in (folder, *_companions(folder)):
        shutil.rmtree(path, ignore_errors=True)
    if link is not None:
        link.unlink()


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

    recover(folder)
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


# ------------------------------------------------------------------------------------------ best model
def save_best_model(pretrained, folder: Path, meta: dict, accelerator) -> None:
    """Weights (safetensors), config, tokenizer and our meta, as one ``save_pretrained`` folder."""
    from ..model import quiet_transformers

    with atomic_dir(folder) as staging, quiet_transformers():
        accelerator.unwrap_model(pretrained.model).save_pretrained(staging, safe_serialization=True)
        pretrained.tokenizer.save_pretrained(staging)
        (staging / FACTS_FILE).write_text(facts_text(meta), encoding="utf-8")


def update_meta(folder: Path, **facts) -> None:
    """Add facts learnt after saving (e.g. the tuned threshold) to the best weights' facts."""
    with replaced_file(Path(folder) / FACTS_FILE) as out:
        out.write(facts_text({**read_meta(folder), **facts}))


def read_meta(folder: str | Path) -> dict:
    """The facts saved beside our weights (``weights_facts``), once a swap a kill interrupted is put right."""
    recover(Path(folder))
    return read_facts(folder)
