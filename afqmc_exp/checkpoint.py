"""Checkpoint files: the *last checkpoint* a killed run resumes from, and the *best model* users keep.

A run's output folder holds

* ``best_model/``: a ``save_pretrained`` folder (safetensors weights, config, tokenizer) plus
  ``afqmc_exp.json``, the facts needed to use the weights as they were trained (max_length, batch size,
  metric, step). Anyone's ``AutoModelForSequenceClassification.from_pretrained`` loads it.
* ``last_checkpoint/``: the weights, the optimizer and scheduler states, every process's RNG states and
  :class:`TrainState` (where training stands), enough to continue exactly where a run was killed.

Both are written into a staging folder that then replaces the old one (``atomic_dir``), so a kill
leaves the previous complete folder or the new one. Nothing here executes code from the files it reads:
weights are safetensors and the rest is read with ``torch.load(weights_only=True)``.

Other modules ask this one (``has_last_checkpoint``, ``remove_last_checkpoint``, ``read_meta``) instead
of knowing the file names.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

LAST_CHECKPOINT = "last_checkpoint"
BEST_MODEL = "best_model"
META_FILE = "afqmc_exp.json"  # beside saved weights: how they were trained and how to feed them
TRAINER_STATE = "trainer_state.pt"
WEIGHTS = "model.safetensors"


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


# ------------------------------------------------------------------------------------------ folders
@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a staging folder; on success it replaces ``target`` by renames, so that a kill at any moment
    leaves either the previous complete folder or the new one, never a half-written one."""
    target = Path(target)
    staging, retired = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def has_last_checkpoint(output_dir: Path) -> bool:
    return (Path(output_dir) / LAST_CHECKPOINT / TRAINER_STATE).exists()


def remove_last_checkpoint(output_dir: Path) -> None:
    """A finished run needs no resume state (it is weights plus twice their size in optimizer state)."""
    shutil.rmtree(Path(output_dir) / LAST_CHECKPOINT, ignore_errors=True)


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
def save_last_checkpoint(folder: Path, model, optimizer, scheduler, state: TrainState, accelerator) -> None:
    """Called on every process (it gathers each one's RNG states: their dropout masks differ); the main
    process writes."""
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    rng = gather_object([capture_rng()])
    if not accelerator.is_main_process:
        return
    with atomic_dir(folder) as staging:
        weights = {k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(weights, staging / WEIGHTS)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "state": asdict(state),
            },
            staging / TRAINER_STATE,
        )


def load_last_checkpoint(folder: Path, model, optimizer, scheduler, accelerator) -> tuple[TrainState, dict]:
    """Restore weights, optimizer and scheduler; return the state and this process's RNG states to apply at
    the next step."""
    from safetensors.torch import load_file

    accelerator.unwrap_model(model).load_state_dict(load_file(folder / WEIGHTS))
    saved = torch.load(folder / TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng = saved["rng"]  # one per process of the interrupted run
    return TrainState(**saved["state"]), rng[accelerator.process_index % len(rng)]


# ------------------------------------------------------------------------------------------ best model
def save_best_model(pretrained, folder: Path, meta: dict, accelerator) -> None:
    """Weights (safetensors), config, tokenizer and our meta, as one ``save_pretrained`` folder."""
    with atomic_dir(folder) as staging:
        accelerator.unwrap_model(pretrained.model).save_pretrained(staging, safe_serialization=True)
        pretrained.tokenizer.save_pretrained(staging)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(folder: str | Path) -> dict:
    """Training facts saved beside our weights (max_length, eval batch size...); {} for foreign folders."""
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}
