"""The training and evaluation loops: one readable loop on Hugging Face Accelerate.

Accelerate (not a home-made engine) gives one code path for CPU, one GPU, several GPUs or processes
(``accelerate launch``/``torchrun``), mixed precision and gradient accumulation. The loop itself stays
plain: it never sees Hydra or MLflow; it receives typed objects and a ``log(metrics, step)`` callback.

Speed choices (measured in ``benchmarks/throughput.py``):
* no host sync per step: the running loss is summed on the device and read every ``log_every`` steps;
* evaluation under ``torch.inference_mode`` over length-sorted batches of ``data.eval_batch_size``;
* the scheduler is stepped here once per optimizer step (not handed to ``accelerator.prepare``, which
  would step it once per process) so ``total_steps`` means the same thing on 1 or N processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
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
    mixed_precision: str = "no"  # no | bf16 | fp16; keep "no" on CPUs (bf16 matmul is ~50x slower there)
    tf32: bool = True  # TensorFloat-32 matmuls on Ampere+ GPUs; ignored on CPU
    grad_accumulation: int = 1
    max_grad_norm: float | None = 1.0  # null: no clipping
    eval_every: int | None = None  # evaluate every N optimizer steps; null: at the end of each epoch
    patience: int | None = None  # stop after this many evaluations without improvement; null: never
    metric: str = "f1"  # dev metric that picks the best weights: accuracy | f1 | auc | loss
    log_every: int = 10  # optimizer steps between logged train loss/lr/speed
    progress_bar: bool = True

    def __post_init__(self) -> None:
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
    history: list[dict] = field(default_factory=list)
    speed: dict[str, float] = field(default_factory=dict)  # train/eval samples per second, time to first step


def seconds_since_process_start() -> float:
    """Wall time since this process started (what a user waits before training begins)."""
    import psutil  # an Accelerate dependency

    return time.time() - psutil.Process().create_time()


def build_accelerator(trainer: TrainerConfig):
    from accelerate import Accelerator

    if trainer.tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(cpu=trainer.device == "cpu", mixed_precision=trainer.mixed_precision,
                       gradient_accumulation_steps=trainer.grad_accumulation)


def predict(model: torch.nn.Module, loader, accelerator) -> tuple[np.ndarray, float]:
    """Probabilities of label 1 for every pair of ``loader``'s split, in file order, and the mean loss
    (NaN when the split is unlabelled). Gathers across processes."""
    model.eval()
    indices, probs, losses = [], [], []
    with torch.inference_mode():
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


def evaluate(model: torch.nn.Module, loader, split: EncodedPairs, accelerator) -> tuple[dict[str, float], np.ndarray]:
    """Loss, accuracy, F1 and AUC of ``model`` on a labelled split, and the probabilities in file order."""
    prob_same, loss = predict(model, loader, accelerator)
    return classification_metrics(split.labels.numpy(), prob_same, loss), prob_same


def save_pretrained_atomic(pretrained: Pretrained, target: Path, meta: dict, accelerator) -> None:
    """Write weights (safetensors), config, tokenizer and our meta into ``target`` so that a kill at any
    moment leaves either the previous complete folder or the new one, never a half-written one."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    accelerator.unwrap_model(pretrained.model).save_pretrained(staging, safe_serialization=True)
    pretrained.tokenizer.save_pretrained(staging)
    (staging / CHECKPOINT_META).write_text(json.dumps(meta, indent=2) + "\n")
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def fit(pretrained: Pretrained, data: AfqmcData, splits: dict[str, EncodedPairs],
        make_optimizer: Callable, make_scheduler: Callable, trainer: TrainerConfig, seed: int,
        output_dir: Path, accelerator, log_metrics: Callable[[dict, int], None]) -> FitResult:
    """Fine-tune ``pretrained.model`` on ``splits["train"]``, evaluating on ``splits["dev"]`` and keeping the
    best weights (by ``trainer.metric``) in ``output_dir/best_model``."""
    from tqdm.auto import tqdm

    pad_id = pretrained.tokenizer.pad_token_id
    pin = accelerator.device.type == "cuda"
    train_loader = data.loader(splits["train"], pad_id, train=True, seed=seed, pin_memory=pin)
    dev_loader = data.loader(splits["dev"], pad_id, train=False, pin_memory=pin)
    train_sampler = train_loader.batch_sampler
    model = pretrained.model
    optimizer = make_optimizer(model.to(accelerator.device))
    model, optimizer, train_loader, dev_loader = accelerator.prepare(model, optimizer, train_loader, dev_loader)

    steps_per_epoch = math.ceil(len(train_loader) / trainer.grad_accumulation)
    total_steps = trainer.epochs * steps_per_epoch
    if trainer.max_steps:
        total_steps = min(total_steps, trainer.max_steps)
    scheduler = make_scheduler(optimizer, total_steps=total_steps)
    best_dir = output_dir / "best_model"
    meta = {"max_length": data.max_length, "eval_batch_size": data.eval_batch_size, "metric": trainer.metric,
            "base_model": pretrained.name_or_path, "seed": seed}

    result = FitResult(best_metric=float("nan"), best_step=0, best_dir=best_dir, steps=0)
    best: float | None = None
    evals_since_best = 0
    step, running_loss, window_samples, window_steps = 0, torch.zeros((), device=accelerator.device), 0, 0
    window_start, window_eval_seconds = time.perf_counter(), 0.0
    bar = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True,
               disable=not (trainer.progress_bar and accelerator.is_local_main_process))

    eval_seconds = 0.0  # spent in run_evaluation, excluded from training speed

    def run_evaluation() -> bool:
        """Evaluate on dev, keep the best weights; True when early stopping says stop."""
        nonlocal best, evals_since_best, eval_seconds
        started = time.perf_counter()
        metrics, _ = evaluate(model, dev_loader, splits["dev"], accelerator)
        result.speed["eval_samples_per_s"] = len(splits["dev"]) / (time.perf_counter() - started)
        value = metrics[trainer.metric]
        improved = trainer.better(value, best)
        if improved:
            best, evals_since_best = value, 0
            result.best_metric, result.best_step = value, step
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_pretrained_atomic(pretrained, best_dir, {**meta, "step": step, trainer.metric: value},
                                       accelerator)
        else:
            evals_since_best += 1
        result.history.append({"step": step, **metrics})
        log_metrics({**{f"dev/{k}": v for k, v in metrics.items()}, f"best/dev_{trainer.metric}": best}, step)
        bar.write(f"step {step}: dev " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                  + (" (best)" if improved else ""))
        eval_seconds += time.perf_counter() - started  # evaluation and saving: not training time
        return trainer.patience is not None and evals_since_best >= trainer.patience

    model.train()
    stop = False
    evaluated_at = -1
    train_started, samples_seen = time.perf_counter(), 0
    for epoch in range(trainer.epochs):
        train_sampler.set_epoch(epoch)
        for batch in train_loader:
            with accelerator.accumulate(model):
                logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and trainer.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), trainer.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach()
            window_samples += len(batch["labels"]) * accelerator.num_processes
            samples_seen += len(batch["labels"]) * accelerator.num_processes
            window_steps += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if step == 1:
                result.speed["time_to_first_step_s"] = seconds_since_process_start()
            if step % trainer.log_every == 0 or step == total_steps:
                mean_loss = accelerator.reduce(running_loss, reduction="mean").item() / window_steps
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(
                        f"training loss is {mean_loss} at step {step}; lower optim.lr, keep "
                        "trainer.max_grad_norm on, or use trainer.mixed_precision=no")
                elapsed = time.perf_counter() - window_start - (eval_seconds - window_eval_seconds)
                log_metrics({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0],
                             "train/samples_per_s": window_samples / elapsed, "train/epoch": epoch}, step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                running_loss.zero_()
                window_samples, window_steps, window_start = 0, 0, time.perf_counter()
                window_eval_seconds = eval_seconds
            if trainer.eval_every and step % trainer.eval_every == 0:
                evaluated_at = step
                stop = run_evaluation()
            if stop or step >= total_steps:
                break
        if stop or step >= total_steps:
            break
        if not trainer.eval_every:
            evaluated_at = step
            stop = run_evaluation()
            if stop:
                break
    train_seconds = time.perf_counter() - train_started - eval_seconds
    if evaluated_at != step:  # the last steps have not been evaluated yet
        run_evaluation()
    bar.close()
    result.steps = step
    result.speed["train_samples_per_s"] = samples_seen / train_seconds
    accelerator.wait_for_everyone()
    return result
