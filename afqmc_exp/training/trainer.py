"""The training loop, on Hugging Face Accelerate.

Accelerate (not a home-made engine) gives one code path for CPU, one GPU, several GPUs or processes
(``accelerate launch``/``torchrun``), mixed precision and gradient accumulation. The loop never sees Hydra
or MLflow: it receives typed objects (the ``recipe``) and the run's parts, whole, as torchtitan's trainer does:
where its metrics go (``metrics``), the ``checkpointer`` of the last checkpoint and the ``best`` weights, both
bound to the run folder by ``run``, which the loop itself never sees.

:class:`Trainer` reads in phases: setup (data, model and optimizer, schedule, resume) -> epochs ->
batches -> after each optimizer step (log, evaluate, checkpoint, signals) -> after each epoch -> finish.
The loop says *when* it stands where; its two components decide what follows: the ``checkpointer`` whether a
last checkpoint is due (every ``checkpoint_minutes`` and/or ``checkpoint_every`` steps, at every epoch's end,
when a signal stops the run), saving the state handed to it once after setup, and the ``evaluator`` whether an
evaluation is due and what it scores, keeps and logs.

Metrics reach MLflow at every evaluation and just before each checkpoint (the checkpointer's ``before_save``); a
resumed run skips the steps the store already holds, so each step is logged exactly once.
SIGINT/SIGTERM stop the loop at the next step boundary, after a checkpoint (see ``signals``).

Why the loop looks like this:
* no host sync per step: the running loss is summed on the device and read every ``log_every`` steps;
* the scheduler is stepped here once per optimizer step (not handed to ``accelerator.prepare``, which
  would step it once per process), so ``total_steps`` means the same thing on 1 or N processes;
* several processes: Accelerate wraps the model (DDP), the optimizer and the evaluation loader, but the
  *training* batches are sharded by our sampler. Sharding a finished loader must give every process
  equally many equally sized batches, so Accelerate pads an epoch's short last batch with pairs from the
  epoch's start, which are then trained on twice. Our sampler hands each process a slice of every global
  batch instead (uneven by at most one pair) and each slice's summed loss is scaled by
  ``processes / pairs in the optimizer step`` (``optimizer_steps``): DDP's gradient average then equals
  the mean over exactly the pairs of that step, as in one process, with every pair seen once per epoch.
  For the same reason gradient accumulation is done here (``accelerator.no_sync`` between optimizer
  steps, a step at the end of every epoch) instead of by ``accelerator.accumulate``, which needs a
  prepared loader to know where an epoch ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import PairData, Split
from ..model import Pretrained, compile_in_place
from .best_weights import BestWeights
from .checkpoint import CheckpointContents, Checkpointer, TrainState, restore_rng
from .ema import WeightAverage
from .evaluator import Evaluator, Metrics
from .hardware import seconds_since_start
from .inference import model_inputs
from .progress import Progress
from .recipe import Recipe, TrainerConfig
from .regularizers import NoRegularizer
from .signals import GracefulStop

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops instead of training on garbage."""


@dataclass
class FitResult:
    best_metric: float
    best_step: int
    best_dir: Path
    steps: int
    # train/eval samples per second, time to first step (and, from the training run, the startup before it)
    speed: dict[str, float] = field(default_factory=dict)
    pairs_seen: int = 0  # training pairs the optimizer steps were taken on (grad_accumulation x batch x steps)
    eval_precision: str = "fp32"  # of the evaluations that picked the best (the best weights are scored again in fp32)


def optimizer_steps(batch_sizes: list[int], accumulation: int) -> list[tuple[int, bool]]:
    """For each global batch of an epoch: the number of pairs its optimizer step averages over, and
    whether the step is taken after it. Every ``accumulation`` batches make a step; an epoch's last step
    may have fewer, so no step straddles two epochs."""
    steps = []
    for start in range(0, len(batch_sizes), accumulation):
        group = batch_sizes[start : start + accumulation]
        steps += [(sum(group), i == len(group) - 1) for i in range(len(group))]
    return steps


class TrainingWindow:
    """The training loss and speed between two logged steps, and the whole run's training time.

    The loss is summed on the device (reading it forces a host sync) and read only when logged. Time
    spent inside :meth:`paused` (evaluation, saving the best weights) does not count as training time.
    A resumed run starts with the summed loss and pair count its checkpoint saved."""

    def __init__(self, device: torch.device, loss: float = 0.0, pairs: int = 0, clock=time.perf_counter):
        self.loss = torch.tensor(loss, device=device)
        self.pairs = pairs  # global pairs whose loss is in ``loss``
        self.samples = 0  # global pairs trained on in this window of wall time
        self.total_samples = 0
        self.paused_seconds = 0.0
        self.clock = clock  # seconds, as perf_counter counts them (a test's own clock)
        self._run_started = self._window_started = clock()
        self._paused_at_window_start = 0.0

    def add(self, loss_sum: torch.Tensor, pairs: int) -> None:
        self.loss += loss_sum.detach()
        self.pairs, self.samples, self.total_samples = (
            self.pairs + pairs,
            self.samples + pairs,
            self.total_samples + pairs,
        )

    @contextlib.contextmanager
    def paused(self):
        started = self.clock()
        try:
            yield
        finally:
            self.paused_seconds += self.clock() - started

    def summed_loss(self, accelerator) -> float:
        """The window's summed loss over every process (a host sync)."""
        return accelerator.reduce(self.loss, reduction="sum").item()

    def flush(self, accelerator) -> tuple[float, float]:
        """The window's mean loss (all processes) and training samples per second; starts a new window."""
        mean_loss = self.summed_loss(accelerator) / self.pairs
        now = self.clock()
        elapsed = now - self._window_started - (self.paused_seconds - self._paused_at_window_start)
        samples_per_s = self.samples / elapsed
        self.loss.zero_()
        self.pairs = self.samples = 0
        self._window_started, self._paused_at_window_start = now, self.paused_seconds
        return mean_loss, samples_per_s

    def train_seconds(self) -> float:
        return self.clock() - self._run_started - self.paused_seconds


class Trainer:
    """Fine-tune ``pretrained.model`` on ``splits["train"]``, evaluating on ``splits["dev"]`` (and every
    ``dev_<name>`` split, the extra dev sets) and keeping the best weights (by ``trainer.metric`` on ``dev``) in
    ``best``. ``fit(resume=True)`` continues from the ``checkpointer``'s last checkpoint; ``metrics`` are flushed
    after each evaluation and before each checkpoint, so what the store holds is never behind the checkpoint.
    The ``recipe`` comes with its ``auto`` settings decided for the accelerator's device (``Recipe.for_device``),
    as ``run`` decides them once for the whole run."""

    def __init__(self, recipe: Recipe, pretrained: Pretrained, splits: dict[str, Split], accelerator,
                 checkpointer: Checkpointer, best: BestWeights, metrics: Metrics,
                 profiling: contextlib.AbstractContextManager | None = None,
                 on_evaluate: Callable[[int, float], None] | None = None):  # fmt: skip
        check_decided(recipe.data, recipe.trainer)
        # what it is given: what to train and how, and the run's parts that keep what training makes
        self.recipe, self.data, self.config, self.seed = recipe, recipe.data, recipe.trainer, recipe.seed
        self.pretrained, self.splits, self.accelerator = pretrained, splits, accelerator
        self.regularizer = recipe.regularizer or NoRegularizer()  # what one slice's forward and backward passes are
        self.checkpointer = checkpointer
        self.best = best
        self.metrics = metrics
        self.profiling = profiling or contextlib.nullcontext()  # a profiler stepped after each optimizer step
        self.on_evaluate = on_evaluate  # (step, dev metric) after each evaluation: an Optuna trial's pruning
        self.pin = accelerator.device.type == "cuda"  # pinned host memory: the copy to the GPU runs asynchronously
        # built by _setup_data
        self.train_loader: torch.utils.data.DataLoader | None = None
        self.sampler = None  # the train loader's batch sampler: this process's slice of every global batch
        self.eval_loaders: dict[str, torch.utils.data.DataLoader] = {}
        # built by _setup_model
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.ema: WeightAverage | None = None
        self.total_steps = 0
        self.evaluator: Evaluator | None = None
        # set by _restore: where training stands, and the RNG states to apply once the loader has started
        self.state = TrainState()
        self.pending_rng: dict | None = None
        self.window: TrainingWindow | None = None
        # set by fit
        self.progress: Progress | None = None
        self.signals: GracefulStop | None = None
        self.profiler = None  # a torch profiler while trainer.profile_steps are profiled
        self.speed: dict[str, float] = {}
        # set at each epoch's start: its global batches' sizes and, per batch, its optimizer step's pairs
        self.batch_pairs: list[int] = []
        self.plan: list[tuple[int, bool]] = []

    # ------------------------------------------------------------------------------------ the run
    def fit(self, resume: bool = False) -> FitResult:
        self._setup_data()
        self._setup_model()
        self._restore(resume)
        shown = self.config.progress_bar and self.accelerator.is_local_main_process
        self.progress = Progress(self.total_steps, self.state.step, show_bar=shown)
        self.model.train()
        try:
            with GracefulStop() as self.signals, self.profiling as self.profiler:
                while self.state.epoch < self.config.epochs and self.state.step < self.total_steps:
                    if self._train_epoch():
                        break
        finally:
            self.checkpointer.wait()  # a checkpoint being written is completed, whatever stopped training
            self.progress.close()
        return self._finish()

    # ------------------------------------------------------------------------------------ setup
    def _setup_data(self) -> None:
        processes = self.accelerator.num_processes
        if self.data.eval_batch_size % processes:
            raise ValueError(
                f"data.eval_batch_size={self.data.eval_batch_size} must be a multiple of the {processes} processes"
            )
        pad_id = self.pretrained.tokenizer.pad_token_id
        self.train_loader = self.data.loader(
            self.splits["train"],
            pad_id,
            train=True,
            seed=self.seed,
            pin_memory=self.pin,
            num_shards=processes,
            shard=self.accelerator.process_index,
        )
        evaluated = [name for name in self.splits if name == "dev" or name.startswith("dev_")]
        self.eval_loaders = {name: self.data.loader(self.splits[name], pad_id, train=False, pin_memory=self.pin)
                             for name in evaluated}  # fmt: skip
        self.sampler = self.train_loader.batch_sampler

    def _setup_model(self) -> None:
        model, config = self.pretrained.model, self.config
        if config.compile != "no":  # the first step pays the compile time (see model.compile_in_place)
            compile_in_place(model, config.compile, config.compile_scope)
        optimizer = self.recipe.make_optimizer(model.to(self.accelerator.device))
        self.model, self.optimizer, *loaders = self.accelerator.prepare(model, optimizer, *self.eval_loaders.values())
        self.eval_loaders = dict(zip(self.eval_loaders, loaders, strict=True))
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        steps_per_epoch = math.ceil(len(self.sampler) / config.grad_accumulation)
        self.total_steps = config.epochs * steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.scheduler = self.recipe.make_scheduler(self.optimizer, total_steps=self.total_steps)
        self.evaluator = Evaluator(
            model=self.model, loaders=self.eval_loaders, splits=self.splits, labels=self.data.labels,
            accelerator=self.accelerator, config=config, best=self.best, metrics=self.metrics,
            on_evaluate=self.on_evaluate,
        )  # fmt: skip

    def _restore(self, resume: bool) -> None:
        """A fresh state, or the last checkpoint's. Its RNG states are applied once the loader has started,
        exactly when an uninterrupted run would be in that state."""
        if resume:
            self.state, self.pending_rng, extra = self.checkpointer.load(self.model, self.optimizer, self.scheduler)
            if self.ema is not None:
                self.ema.load_state_dict(extra)
            log.info(
                "resuming at step %d (epoch %d, batch %d)", self.state.step, self.state.epoch, self.state.batch_in_epoch
            )
        # each process sums its own pairs' losses; the main process holds the resumed window's sum
        main = self.accelerator.is_main_process
        self.window = TrainingWindow(
            self.accelerator.device, self.state.window_loss if main else 0.0, self.state.window_pairs
        )
        self.checkpointer.attach(CheckpointContents(self.model, self.optimizer, self.scheduler, self.state,
                                                    self.window, self.ema))  # fmt: skip
        self.checkpointer.restart_clock()

    # ------------------------------------------------------------------------------------ epochs and batches
    def _train_epoch(self) -> bool:
        """One epoch, or what a resumed run has left of it; True when training should stop."""
        self.sampler.set_epoch(self.state.epoch)
        self.sampler.skip_next(self.state.batch_in_epoch)
        self.batch_pairs = self.sampler.batch_sizes()  # global batches: the same on every process
        self.plan = optimizer_steps(self.batch_pairs, self.config.grad_accumulation)
        for batch in self.train_loader:
            if self.pending_rng is not None:
                restore_rng(self.pending_rng)
                self.pending_rng = None
            if self._train_batch(batch) and self._after_step():
                return True
        return self._after_epoch()

    def _train_batch(self, batch: dict) -> bool:
        """Forward and backward on this process's slice of a global batch, and the optimizer step when the
        plan says the step is complete; True if a step was taken."""
        accelerator, model = self.accelerator, self.model
        step_pairs, steps_now = self.plan[self.state.batch_in_epoch]
        batch = {k: v.to(accelerator.device, non_blocking=self.pin) for k, v in batch.items()}
        scale = accelerator.num_processes / step_pairs  # DDP averages over processes: the mean over the step's pairs
        if self.config.compile == "reduce-overhead":  # a new iteration: CUDA graphs may reuse the last one's memory
            torch.compiler.cudagraph_mark_step_begin()

        def backward(summed: torch.Tensor) -> None:
            accelerator.backward(summed * scale)

        with contextlib.nullcontext() if steps_now else accelerator.no_sync(model):
            inputs = model_inputs(batch, model)
            loss_sum = self.regularizer(model, inputs, batch["labels"], backward, lambda: accelerator.no_sync(model))
        if steps_now:
            self._optimizer_step()
        self.window.add(loss_sum, self.batch_pairs[self.state.batch_in_epoch])
        self.state.pairs_seen += self.batch_pairs[self.state.batch_in_epoch]
        self.state.batch_in_epoch += 1
        return steps_now

    def _optimizer_step(self) -> None:
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        self.state.step += 1

    # ------------------------------------------------------------------------------------ after a step or epoch
    def _after_step(self) -> bool:
        """Log, evaluate, checkpoint and answer signals after an optimizer step; True when training should stop."""
        config, step = self.config, self.state.step
        self.progress.step()
        if self.profiler is not None:
            self.profiler.step()
        if "time_to_first_step_s" not in self.speed:
            self.speed["time_to_first_step_s"] = seconds_since_start()
        logged = step % config.log_every == 0 or step == self.total_steps
        if logged:
            self._log_training()
        stop = self._evaluate() if self.evaluator.due(step) else False
        stopping = self.signals.requested  # read once: a signal between two reads would stop with no checkpoint
        self.checkpointer.save(step, logged=logged, stopping=stopping)
        if stopping:
            resume = self.checkpointer.resume_command
            raise self.signals.stopped(f"stopped by a signal at step {step}"
                                       + (f"; continue it: {resume}" if resume else ""))  # fmt: skip
        return stop or step >= self.total_steps

    def _after_epoch(self) -> bool:
        """Evaluate (unless ``eval_every`` does it) and checkpoint; True when early stopping says stop."""
        self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        stop = self._evaluate() if self.evaluator.due(self.state.step, epoch_end=True) else False
        self.checkpointer.save(self.state.step, epoch_end=True)
        return stop

    def _log_training(self) -> None:
        mean_loss, samples_per_s = self.window.flush(self.accelerator)
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(
                f"training loss is {mean_loss} at step {self.state.step}; lower optim.lr, keep "
                "trainer.max_grad_norm on, or use trainer.mixed_precision=no"
            )
        lr = self.scheduler.get_last_lr()[0]
        self.metrics.log_metrics(
            {
                "train/loss": mean_loss,
                "train/lr": lr,
                "train/epoch": self.state.epoch,
                "train/pairs": self.state.pairs_seen,
                "train/samples_per_s": samples_per_s,
            },
            self.state.step,
        )
        if self.accelerator.is_main_process:
            self.progress.report(self.state.step, mean_loss, lr, samples_per_s)

    def _evaluate(self) -> bool:
        """The evaluator's turn (see ``evaluator``), on the weight average if there is one, off the training
        clock; True when early stopping says stop."""
        with self.window.paused(), self.ema.applied() if self.ema else contextlib.nullcontext():
            return self.evaluator.evaluate(self.state, self.total_steps)

    # ------------------------------------------------------------------------------------ finish
    def _finish(self) -> FitResult:
        """Evaluate the last steps if no evaluation has seen them, and report."""
        train_seconds = self.window.train_seconds()
        if self.state.evaluated_at != self.state.step:
            self._evaluate()
        if self.evaluator.dev_samples_per_s is not None:  # None: resumed after its last evaluation, none made here
            self.speed["eval_samples_per_s"] = self.evaluator.dev_samples_per_s
        self.speed["train_samples_per_s"] = self.window.total_samples / max(train_seconds, 1e-9)
        if self.accelerator.device.type == "cuda":
            self.speed["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.accelerator.device) / 2**30
        self.accelerator.wait_for_everyone()
        return FitResult(
            best_metric=self.state.best,
            best_step=self.state.best_step,
            best_dir=self.best.folder,
            steps=self.state.step,
            speed=self.speed,
            pairs_seen=self.state.pairs_seen,
            eval_precision=self.config.eval_precision,
        )


def check_decided(data: PairData, config: TrainerConfig) -> None:
    """The trainer runs on settings decided for its device; an ``auto`` left in them is a caller's slip."""
    auto = {"data.eval_batch_size": data.eval_batch_size, "data.pad_to_multiple_of": data.pad_to_multiple_of,
            "trainer.eval_precision": config.eval_precision,
            "trainer.checkpoint_in_background": config.checkpoint_in_background}  # fmt: skip
    undecided = [name for name, value in auto.items() if value == "auto"]
    if undecided:
        raise ValueError(f"{', '.join(undecided)}: still auto; pass data.for_device(...) and config.for_device(...)")
