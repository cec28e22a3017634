"""The training and evaluation loops: one readable loop on Hugging Face Accelerate.

Accelerate (not a home-made engine) gives one code path for CPU, one GPU, several GPUs or processes
(``accelerate launch``/``torchrun``), mixed precision and gradient accumulation. The loop itself stays
plain: it never sees Hydra or MLflow; it receives typed objects and a ``log(metrics, step)`` callback.

Nothing is lost (see ``TrainState``): a *last checkpoint* (weights, optimizer, scheduler, RNG states,
position in the epoch, best metric, the running loss window) is written every
``trainer.checkpoint_every`` steps, after every evaluation and at the end of every epoch, into a staging
folder that is then renamed into place, so a kill at any moment leaves the previous or the new
checkpoint, never half of one. Metrics reach MLflow at those moments (``on_checkpoint``, just before
the checkpoint is written); a resumed run skips logging the steps the store already holds, so each step
is logged exactly once. SIGINT/SIGTERM ask the loop to stop at the
next step boundary: it checkpoints and raises ``KeyboardInterrupt`` (a second Ctrl-C stops at once).

Speed choices (measured in ``benchmarks/throughput.py``):
* no host sync per step: the running loss is summed on the device and read every ``log_every`` steps;
* evaluation under ``torch.inference_mode`` over length-sorted batches of ``data.eval_batch_size``, in
  bf16 where the hardware has it (``eval_in_bf16``: 1.7x faster on a Zen 4 CPU, accuracy/F1 equal up to
  rare flips near the threshold; the best weights are scored again in fp32 at the end);
* the scheduler is stepped here once per optimizer step (not handed to ``accelerator.prepare``, which
  would step it once per process) so ``total_steps`` means the same thing on 1 or N processes.

Several processes: Accelerate wraps the model (DDP), the optimizer and the evaluation loader, but the
*training* batches are sharded by our sampler, not by ``accelerator.prepare``. Sharding a finished
loader must give every process equally many equally sized batches, so Accelerate pads an epoch's short
last batch with pairs from the epoch's start, which are then trained on twice. Our sampler hands each
process a slice of every global batch instead (uneven by at most one pair) and each slice's summed loss
is scaled by ``processes / pairs in the optimizer step`` (``optimizer_steps``): DDP's gradient average
then equals the mean over exactly the pairs of that step, as in one process, with every pair seen once
per epoch. For the same reason gradient accumulation is done here (``accelerator.no_sync`` between
optimizer steps, a step at the end of every epoch) instead of by ``accelerator.accumulate``, which
needs a prepared loader to know where an epoch ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import AfqmcData, EncodedPairs
from .metrics import GREATER_IS_BETTER, classification_metrics
from .model import CHECKPOINT_META, Pretrained

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops instead of training on garbage."""


@dataclass
class TrainerConfig:
    """The ``trainer`` config group."""

    epochs: int = 3
    max_steps: int | None = None  # cap on optimizer steps over the whole run (null: epochs decide)
    device: str = "auto"  # auto (GPU if there is one) | cpu
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU); bf16 on CPU only with AVX512-BF16/AMX (see cpu_has_native_bf16)
    eval_precision: str = "auto"  # periodic dev evaluations: auto (bf16 where native) | fp32 | bf16 (see eval_in_bf16)
    tf32: bool = True  # TensorFloat-32 matmuls on Ampere+ GPUs; ignored on CPU
    grad_accumulation: int = 1
    max_grad_norm: float | None = 1.0  # null: no clipping
    eval_every: int | None = None  # evaluate every N optimizer steps; null: at the end of each epoch
    patience: int | None = None  # stop after this many evaluations without improvement; null: never
    metric: str = "f1"  # dev metric that picks the best weights: accuracy | f1 | auc | loss
    log_every: int = 10  # optimizer steps between logged train loss/lr/speed
    checkpoint_every: int | None = 100  # optimizer steps between last-checkpoint saves (also each eval and epoch)
    keep_last_checkpoint: bool = False  # keep last_checkpoint/ after a run finishes (weights + 2x optimizer state)
    profile_steps: int = 0  # profile this many optimizer steps (after 2 of warm-up) into <output>/profile/
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.eval_precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"trainer.eval_precision={self.eval_precision!r}: use auto, fp32 or bf16")
        if self.metric not in GREATER_IS_BETTER:
            raise ValueError(f"trainer.metric={self.metric!r}: use one of {', '.join(GREATER_IS_BETTER)}")

    def better(self, value: float, best: float | None) -> bool:
        if best is None:  # the first evaluation always saves, so a best folder always exists
            return True
        if math.isnan(best):
            return not math.isnan(value)
        return value > best if GREATER_IS_BETTER[self.metric] else value < best


@dataclass
class FitResult:
    best_metric: float
    best_step: int
    best_dir: Path
    steps: int
    speed: dict[str, float] = field(default_factory=dict)  # train/eval samples per second, time to first step


def seconds_since_process_start() -> float:
    """Wall time since this process started (what a user waits before training begins)."""
    import psutil  # an Accelerate dependency

    return time.time() - psutil.Process().create_time()


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16: AMD Zen 4+, Intel Cooper Lake; or AMX:
    Intel Sapphire Rapids+). There bf16 autocast trains ~1.5x and evaluates ~1.7x faster than fp32 (MiniLM
    on AFQMC, measured on a 2-core Zen 4); elsewhere bf16 is emulated and far slower than fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def eval_in_bf16(trainer: TrainerConfig, device: torch.device) -> bool:
    """Whether the periodic dev evaluations run under bf16 autocast (see ``TrainerConfig.eval_precision``).

    ``auto`` picks bf16 where the hardware computes it natively (GPUs with bf16, CPUs with AVX512-BF16 or
    AMX). It touches only the evaluations that track training and pick the best weights: measured on 5
    MiniLM models fine-tuned on the sample set, bf16 evaluation gave the same accuracy and F1 as fp32 (no
    label flipped out of 800, AUC within 5e-4) at 1.7x the speed on a 2-core Zen 4, while single
    probabilities moved by up to 0.1 (so a pair near the threshold can flip: one of 160 did in a
    quickstart run). So the saved best weights are always scored again without it (in the
    training precision: fp32 by default) for the ``final/*`` metrics and prediction files, and ``fp32``
    makes every evaluation exact. Training follows ``mixed_precision`` only: bf16 *training* cost about
    a point of dev accuracy in the same comparison (5 seeds), so it is not the default.
    """
    if trainer.eval_precision != "auto":
        return trainer.eval_precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def build_accelerator(trainer: TrainerConfig):
    from accelerate import Accelerator

    if trainer.tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from accelerate.utils import DataLoaderConfiguration

    # split_batches: data.eval_batch_size is global, each of N processes evaluates 1/N of every batch
    # (training batches are sharded by our sampler: see the module docstring)
    accelerator = Accelerator(cpu=trainer.device == "cpu", mixed_precision=trainer.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    if accelerator.device.type == "cpu" and trainer.mixed_precision == "fp16":
        log.warning("trainer.mixed_precision=fp16 needs a GPU: this CPU run computes in fp32 (Accelerate ignores "
                    "fp16 on CPU). On a CPU with AVX512-BF16 or AMX, trainer.mixed_precision=bf16 trains ~1.5x faster.")
    elif accelerator.device.type == "cpu" and trainer.mixed_precision == "bf16" and not cpu_has_native_bf16():
        log.warning("trainer.mixed_precision=bf16: this CPU has neither AVX512-BF16 nor AMX, so bf16 is emulated "
                    "and much slower than fp32; use trainer.mixed_precision=no")
    return accelerator


def optimizer_steps(batch_sizes: list[int], accumulation: int) -> list[tuple[int, bool]]:
    """For each global batch of an epoch: the number of pairs its optimizer step averages over, and
    whether the step is taken after it. Every ``accumulation`` batches make a step; an epoch's last step
    may have fewer, so no step straddles two epochs."""
    steps = []
    for start in range(0, len(batch_sizes), accumulation):
        group = batch_sizes[start:start + accumulation]
        steps += [(sum(group), i == len(group) - 1) for i in range(len(group))]
    return steps


def predict(model: torch.nn.Module, loader, accelerator, bf16: bool = False) -> tuple[np.ndarray, float]:
    """Probabilities of label 1 for every pair of ``loader``'s split, in file order, and the mean loss
    (NaN when the split is unlabelled), computed under bf16 autocast if ``bf16``. Gathers across processes."""
    model.eval()
    indices, probs, losses = [], [], []
    with torch.inference_mode(), torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits.float()
            if "labels" in batch:
                losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none"))
            gathered = accelerator.gather_for_metrics((batch["index"], logits.softmax(-1)[:, 1]))
            indices.append(gathered[0].cpu())
            probs.append(gathered[1].cpu())
    model.train()
    order = torch.cat(indices).numpy()
    prob_same = np.empty(len(order), dtype=np.float64)
    prob_same[order] = torch.cat(probs).double().numpy()
    if losses:
        loss = accelerator.gather_for_metrics(torch.cat(losses)).double().mean().item()
    else:
        loss = float("nan")
    return prob_same, loss


def evaluate(model: torch.nn.Module, loader, split: EncodedPairs, accelerator,
             bf16: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """Loss, accuracy, F1 and AUC of ``model`` on a labelled split, and the probabilities in file order."""
    prob_same, loss = predict(model, loader, accelerator, bf16)
    return classification_metrics(split.labels.numpy(), prob_same, loss), prob_same


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


def save_pretrained_atomic(pretrained: Pretrained, target: Path, meta: dict, accelerator) -> None:
    """Weights (safetensors), config, tokenizer and our meta, as one ``save_pretrained`` folder."""
    with atomic_dir(target) as staging:
        accelerator.unwrap_model(pretrained.model).save_pretrained(staging, safe_serialization=True)
        pretrained.tokenizer.save_pretrained(staging)
        (staging / CHECKPOINT_META).write_text(json.dumps(meta, indent=2) + "\n")


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


LAST_CHECKPOINT = "last_checkpoint"


def _rng_states() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, key, *rest = states["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def save_last_checkpoint(folder: Path, model, optimizer, scheduler, state: TrainState, accelerator) -> None:
    """Called on every process (it gathers each one's RNG states: their dropout masks differ); the main
    process writes."""
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    rng = gather_object([_rng_states()])
    if not accelerator.is_main_process:
        return
    with atomic_dir(folder) as staging:
        weights = {k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(weights, staging / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng, "state": asdict(state)}, staging / "trainer_state.pt")


def load_last_checkpoint(folder: Path, model, optimizer, scheduler, accelerator) -> tuple[TrainState, dict]:
    """Restore weights, optimizer and scheduler; return the state and this process's RNG states to apply at
    the next step. Never executes code from the files: safetensors, and ``torch.load(weights_only=True)``."""
    from safetensors.torch import load_file

    accelerator.unwrap_model(model).load_state_dict(load_file(folder / "model.safetensors"))
    saved = torch.load(folder / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng = saved["rng"]  # one per process of the interrupted run
    return TrainState(**saved["state"]), rng[accelerator.process_index % len(rng)]


class GracefulStop:
    """SIGINT/SIGTERM set ``requested``; the loop checkpoints and stops. A second SIGINT interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: saving a checkpoint and stopping (Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def start_profiler(steps: int, folder: Path):
    """torch.profiler over ``steps`` optimizer steps after 2 of warm-up: a Chrome/Perfetto trace and a table
    of the most expensive operators in ``folder`` (logged with the run's artifacts)."""
    if steps <= 0:
        return None
    from torch.profiler import ProfilerActivity, profile, schedule

    def save(prof) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(folder / "trace.json"))
        (folder / "operators.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        log.info("profile of %d steps written to %s", steps, folder)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profiler = profile(activities=activities, schedule=schedule(wait=0, warmup=2, active=steps, repeat=1),
                       on_trace_ready=save, record_shapes=True)
    profiler.start()
    return profiler


def fit(pretrained: Pretrained, data: AfqmcData, splits: dict[str, EncodedPairs],
        make_optimizer: Callable, make_scheduler: Callable, trainer: TrainerConfig, seed: int,
        output_dir: Path, accelerator, log_metrics: Callable[[dict, int], None],
        on_checkpoint: Callable[[], None] = lambda: None, resume: bool = False) -> FitResult:
    """Fine-tune ``pretrained.model`` on ``splits["train"]``, evaluating on ``splits["dev"]`` and keeping the
    best weights (by ``trainer.metric``) in ``output_dir/best_model``. ``resume=True`` continues from
    ``output_dir/last_checkpoint``; ``on_checkpoint`` is called after each checkpoint (to flush metrics)."""
    from tqdm.auto import tqdm

    pad_id, processes = pretrained.tokenizer.pad_token_id, accelerator.num_processes
    if data.eval_batch_size % processes:
        raise ValueError(f"data.eval_batch_size={data.eval_batch_size} must be a multiple of the {processes} processes")
    pin = accelerator.device.type == "cuda"
    train_loader = data.loader(splits["train"], pad_id, train=True, seed=seed, pin_memory=pin,
                               num_shards=processes, shard=accelerator.process_index)
    dev_loader = data.loader(splits["dev"], pad_id, train=False, pin_memory=pin)
    train_sampler = train_loader.batch_sampler
    model = pretrained.model
    optimizer = make_optimizer(model.to(accelerator.device))
    model, optimizer, dev_loader = accelerator.prepare(model, optimizer, dev_loader)

    steps_per_epoch = math.ceil(len(train_sampler) / trainer.grad_accumulation)
    total_steps = trainer.epochs * steps_per_epoch
    if trainer.max_steps:
        total_steps = min(total_steps, trainer.max_steps)
    scheduler = make_scheduler(optimizer, total_steps=total_steps)
    best_dir, last_dir = output_dir / "best_model", output_dir / LAST_CHECKPOINT
    eval_bf16 = eval_in_bf16(trainer, accelerator.device)
    meta = {"max_length": data.max_length, "eval_batch_size": data.eval_batch_size, "metric": trainer.metric,
            "base_model": pretrained.name_or_path, "seed": seed}

    state, pending_rng = TrainState(), None
    if resume:
        state, pending_rng = load_last_checkpoint(last_dir, model, optimizer, scheduler, accelerator)
        log.info("resuming at step %d (epoch %d, batch %d)", state.step, state.epoch, state.batch_in_epoch)
    result = FitResult(best_metric=float("nan"), best_step=0, best_dir=best_dir, steps=0)
    # each process sums its own pairs' losses; the main process holds the resumed window's sum
    running_loss = torch.tensor(state.window_loss if accelerator.is_main_process else 0.0, device=accelerator.device)
    window_samples, window_start, window_eval_seconds = 0, time.perf_counter(), 0.0
    eval_seconds = 0.0  # spent in evaluation and saving: excluded from training speed
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (trainer.progress_bar and accelerator.is_local_main_process))

    def checkpoint() -> None:
        on_checkpoint()  # metrics first: a kill between the two leaves steps a resumed run knows to skip
        state.window_loss = accelerator.reduce(running_loss, reduction="sum").item()
        save_last_checkpoint(last_dir, model, optimizer, scheduler, state, accelerator)

    def run_evaluation() -> bool:
        """Evaluate on dev, keep the best weights; True when early stopping says stop."""
        nonlocal eval_seconds
        started = time.perf_counter()
        metrics, _ = evaluate(model, dev_loader, splits["dev"], accelerator, bf16=eval_bf16)
        result.speed["eval_samples_per_s"] = len(splits["dev"]) / (time.perf_counter() - started)
        value = metrics[trainer.metric]
        improved = trainer.better(value, state.best)
        if improved:
            state.best, state.best_step, state.evals_since_best = value, state.step, 0
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_pretrained_atomic(pretrained, best_dir, {**meta, "step": state.step, trainer.metric: value},
                                       accelerator)
        else:
            state.evals_since_best += 1
        state.evaluated_at = state.step
        log_metrics({**{f"dev/{k}": v for k, v in metrics.items()}, f"best/dev_{trainer.metric}": state.best,
                     "best/step": state.best_step}, state.step)
        if accelerator.is_main_process:
            bar.write(f"step {state.step}: dev " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                      + (" (best)" if improved else ""))
        eval_seconds += time.perf_counter() - started
        return trainer.patience is not None and state.evals_since_best >= trainer.patience

    model.train()
    train_started, samples_seen, stop = time.perf_counter(), 0, False
    profiler = start_profiler(trainer.profile_steps, output_dir / "profile") if accelerator.is_main_process else None
    with GracefulStop() as signals:
        while state.epoch < trainer.epochs and state.step < total_steps and not stop:
            train_sampler.set_epoch(state.epoch)
            train_sampler.skip_next(state.batch_in_epoch)
            batch_pairs = train_sampler.batch_sizes()  # global batches: the same on every process
            plan = optimizer_steps(batch_pairs, trainer.grad_accumulation)
            for batch in train_loader:
                if pending_rng is not None:  # after the loader has started, exactly as in an uninterrupted run
                    _set_rng_states(pending_rng)
                    pending_rng = None
                step_pairs, steps_now = plan[state.batch_in_epoch]
                batch = {k: v.to(accelerator.device, non_blocking=pin) for k, v in batch.items()}
                with contextlib.nullcontext() if steps_now else accelerator.no_sync(model):
                    logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits
                    loss_sum = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum")
                    # DDP averages gradients over processes: this makes the result the mean over the step's pairs
                    accelerator.backward(loss_sum * (processes / step_pairs))
                if steps_now:
                    if trainer.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), trainer.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                running_loss += loss_sum.detach()
                n = batch_pairs[state.batch_in_epoch]
                window_samples, samples_seen = window_samples + n, samples_seen + n
                state.window_pairs += n
                state.batch_in_epoch += 1
                if not steps_now:
                    continue
                scheduler.step()
                state.step += 1
                bar.update(1)
                if profiler is not None:
                    profiler.step()
                if "time_to_first_step_s" not in result.speed:
                    result.speed["time_to_first_step_s"] = seconds_since_process_start()
                if state.step % trainer.log_every == 0 or state.step == total_steps:
                    mean_loss = accelerator.reduce(running_loss, reduction="sum").item() / state.window_pairs
                    if not math.isfinite(mean_loss):
                        raise NonFiniteLossError(
                            f"training loss is {mean_loss} at step {state.step}; lower optim.lr, keep "
                            "trainer.max_grad_norm on, or use trainer.mixed_precision=no")
                    elapsed = time.perf_counter() - window_start - (eval_seconds - window_eval_seconds)
                    lr = scheduler.get_last_lr()[0]
                    log_metrics({"train/loss": mean_loss, "train/lr": lr, "train/epoch": state.epoch,
                                 "train/samples_per_s": window_samples / elapsed}, state.step)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    running_loss.zero_()
                    state.window_pairs, window_samples = 0, 0
                    window_start, window_eval_seconds = time.perf_counter(), eval_seconds
                evaluated = bool(trainer.eval_every) and state.step % trainer.eval_every == 0
                if evaluated:
                    stop = run_evaluation()
                stop = stop or state.step >= total_steps or signals.requested
                if evaluated or signals.requested or (
                        trainer.checkpoint_every and state.step % trainer.checkpoint_every == 0):
                    checkpoint()
                if signals.requested:
                    raise KeyboardInterrupt(f"stopped by a signal at step {state.step}; resume with "
                                            f"resume={output_dir}")
                if stop:
                    break
            else:  # the epoch ran to its end
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if not trainer.eval_every:
                    stop = run_evaluation()
                if trainer.checkpoint_every:
                    checkpoint()
    if profiler is not None:
        profiler.stop()
    train_seconds = time.perf_counter() - train_started - eval_seconds
    if state.evaluated_at != state.step:  # the last steps have not been evaluated yet
        run_evaluation()
    bar.close()
    result.best_metric, result.best_step, result.steps = state.best, state.best_step, state.step
    result.speed["train_samples_per_s"] = samples_seen / max(train_seconds, 1e-9)
    accelerator.wait_for_everyone()
    return result
