"""The trainer: step arithmetic for sharded batches and gradient accumulation, and each phase of fit() on a tiny
random BERT (fast: no pretrained model, no MLflow)."""

import json
import re
from functools import partial

import pytest
import torch

from afqmc_exp.data import LengthGroupedBatchSampler, PairData
from afqmc_exp.run_folder import RunFolder
from afqmc_exp.training.best_weights import BestWeights
from afqmc_exp.training.best_weights import read_facts as read_meta
from afqmc_exp.training.checkpoint import TRAINER_STATE, Checkpointer
from afqmc_exp.training.hardware import build_accelerator
from afqmc_exp.training.optim import adamw, schedule
from afqmc_exp.training.profiling import profiled
from afqmc_exp.training.recipe import Recipe, TrainerConfig
from afqmc_exp.training.trainer import NonFiniteLossError, Trainer, TrainingWindow, optimizer_steps
from helpers import REPO, HostSyncs, pairs_split, tiny_pairs, tiny_pretrained


def test_optimizer_steps_group_batches_within_an_epoch():
    assert optimizer_steps([16, 16, 16, 5], 1) == [(16, True), (16, True), (16, True), (5, True)]
    assert optimizer_steps([16, 16, 16, 5], 2) == [(32, False), (32, True), (21, False), (21, True)]
    assert optimizer_steps([16, 16, 5], 2) == [(32, False), (32, True), (5, True)]  # the epoch ends a step


def test_scaled_slice_losses_give_the_gradient_of_the_mean_over_each_step():
    """What DDP computes from the trainer's per-slice losses (accumulated over micro-batches, averaged over
    processes) is exactly the gradient of one process's mean loss over the step's pairs, also when the
    slices are uneven (a 5-pair batch on 2 processes) and a step holds batches of different sizes."""
    torch.manual_seed(0)
    weight = torch.randn(3, 2, requires_grad=True)
    sizes, processes, accumulation = [16, 16, 16, 5], 2, 2
    features, labels = torch.randn(sum(sizes), 3), torch.randint(0, 2, (sum(sizes),))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = [list(range(start, start + size)) for start, size in zip(starts, sizes, strict=True)]

    def loss_sum(rows):
        return torch.nn.functional.cross_entropy(features[rows] @ weight, labels[rows], reduction="sum")

    plan, position = optimizer_steps(sizes, accumulation), 0
    while position < len(batches):
        group = []
        while True:
            group.append(position)
            position += 1
            if plan[position - 1][1]:
                break
        rows = sum((batches[i] for i in group), [])
        (reference,) = torch.autograd.grad(
            torch.nn.functional.cross_entropy(features[rows] @ weight, labels[rows]), weight
        )
        per_process = []
        for rank in range(processes):
            sampler = LengthGroupedBatchSampler([1] * len(labels), 16, seed=0, num_shards=processes, shard=rank)
            grad = torch.zeros_like(weight)
            for i in group:  # this process's slice of each micro-batch, as the sampler cuts it
                part = sampler.shard_of(batches[i])
                grad += torch.autograd.grad(loss_sum(part) * (processes / plan[i][0]), weight)[0]
            per_process.append(grad)
        assert torch.allclose(torch.stack(per_process).mean(0), reference, atol=1e-6)


# ------------------------------------------------------------------------------------ fit() on a tiny BERT
def has_last_checkpoint(run_dir) -> bool:
    """What ``resume=`` continues from is in the run folder."""
    return (RunFolder(run_dir).last_checkpoint / TRAINER_STATE).exists()


class Logged(list):
    """The run's metrics: every (step, metrics) the trainer logs, and how often they were flushed."""

    flushes = 0

    def __call__(self, metrics, step):
        self.append((step, dict(metrics)))

    def log_metrics(self, metrics, step):
        self(metrics, step)

    def flush(self):
        self.flushes += 1

    def steps(self, key):
        return [step for step, metrics in self if key in metrics]

    def values(self, key):
        return [(step, metrics[key]) for step, metrics in self if key in metrics]


def make_trainer(tmp_path, lr=1e-3, n_train=37, dropout=0.1, pad_to_multiple_of=1, **config):
    """37 training pairs in batches of 4 (9 full batches and a 1-pair one: 10 per epoch), 16 dev pairs."""
    pretrained = tiny_pretrained(tmp_path / "tiny", dropout=dropout)
    data = PairData(
        dir=str(tmp_path), batch_size=4, eval_batch_size=8, max_length=24, pad_to_multiple_of=pad_to_multiple_of
    )
    splits = {
        "train": pairs_split(tiny_pairs(n_train, seed=1), pretrained.tokenizer, 24),
        "dev": pairs_split(tiny_pairs(16, seed=2), pretrained.tokenizer, 24),
    }
    logged, folder = Logged(), RunFolder(tmp_path / "run")
    config = TrainerConfig(**{"device": "cpu", "progress_bar": False, "eval_precision": "fp32", **config})
    accelerator = build_accelerator(device="cpu")
    recipe = Recipe(data=data, load_model=None, make_optimizer=partial(adamw, lr=lr),
                    make_scheduler=partial(schedule, warmup_ratio=0.1), trainer=config, seed=3)  # fmt: skip
    recipe = recipe.for_device(accelerator.device)  # as the run assembles it (training/run.py)
    trainer = Trainer(
        recipe=recipe, pretrained=pretrained, splits=splits, accelerator=accelerator,
        checkpointer=Checkpointer.of_run(folder, recipe.trainer, accelerator, before_save=logged.flush),
        best=BestWeights.of_run(folder.best_model, pretrained, recipe.data, config.metric, recipe.seed, accelerator),
        metrics=logged, profiling=profiled(config.profile_steps, folder.profile, config.profile_skip),
    )  # fmt: skip
    return trainer, logged


def test_fit_logs_evaluates_once_per_epoch_and_keeps_the_best_weights(tmp_path, caplog):
    caplog.set_level("INFO", logger="afqmc_exp.training.progress")
    trainer, logged = make_trainer(tmp_path, epochs=2, log_every=3)
    result = trainer.fit()
    lines = [
        r.getMessage() for r in caplog.records if r.name == "afqmc_exp.training.progress"
    ]  # a redirected log's progress
    assert [line.split(" (")[0] for line in lines] == [f"step {s}/20" for s in (3, 6, 9, 12, 15, 18, 20)]
    assert re.fullmatch(r"step 3/20 \(15%\) loss \d+\.\d{4} lr \d\.\d\de-\d\d \d+ pairs/s eta \dm\d\ds", lines[0])
    assert result.steps == 20 and trainer.total_steps == 20
    assert logged.steps("train/loss") == [3, 6, 9, 12, 15, 18, 20]  # and always the last step
    assert logged.steps("dev/f1") == [10, 20]  # eval_every=null: at each epoch's end
    assert {"dev/accuracy", "dev/macro_f1", "dev/f1_0", "dev/f1_1", "dev/auc", "best/dev_accuracy"} <= set(
        logged[-1][1]
    )
    assert all(0 < loss < 5 for _, loss in logged.values("train/loss"))
    meta = read_meta(result.best_dir)
    assert meta["step"] == result.best_step and meta["max_length"] == 24 and meta["metric"] == "accuracy"
    assert (meta["task"], meta["labels"], meta["format"]) == ("afqmc", ["0", "1"], "jsonl")
    assert (result.best_dir / "model.safetensors").exists() and (result.best_dir / "tokenizer.json").exists()
    assert set(result.speed) == {"time_to_first_step_s", "eval_samples_per_s", "train_samples_per_s"}


def test_accumulation_makes_fewer_steps_that_never_straddle_an_epoch_and_max_steps_caps_them(tmp_path):
    trainer, logged = make_trainer(tmp_path, epochs=2, grad_accumulation=3, log_every=1)
    result = trainer.fit()
    assert result.steps == 8 and result.pairs_seen == 2 * 37  # 10 batches: steps of 3, 3, 3 and 1 batches, twice
    assert logged.values("train/pairs") == [(1, 12), (2, 24), (3, 36), (4, 37), (5, 49), (6, 61), (7, 73), (8, 74)]
    trainer, logged = make_trainer(tmp_path / "capped", epochs=2, grad_accumulation=3, log_every=1, max_steps=5)
    assert trainer.fit().steps == 5
    assert logged.steps("dev/f1") == [4, 5]  # the epoch's end, then the unevaluated last step


def test_evaluation_every_n_steps_and_early_stopping(tmp_path):
    trainer, logged = make_trainer(tmp_path, lr=0.0, epochs=5, eval_every=2, patience=2, metric="loss")
    result = trainer.fit()  # lr 0: the dev loss never improves after the first evaluation
    assert logged.steps("dev/loss") == [2, 4, 6] and result.steps == 6 and result.best_step == 2


def checkpointed_steps(trainer) -> list[int]:
    """Record the step of every checkpoint ``trainer`` saves."""
    steps, write = [], trainer.checkpointer.writer.save
    trainer.checkpointer.writer.save = lambda *args: (steps.append(trainer.state.step), write(*args))
    return steps


def test_checkpoints_at_the_step_cadence_and_at_epoch_ends(tmp_path):
    trainer, _ = make_trainer(tmp_path, epochs=2, checkpoint_every=4, checkpoint_minutes=None, eval_every=3)
    steps = checkpointed_steps(trainer)
    trainer.fit()
    assert steps == [4, 8, 10, 12, 16, 20]  # the first epoch's end (10); the run stops at 20 before its epoch end
    assert has_last_checkpoint(tmp_path / "run")


@pytest.mark.parametrize(
    ("raised", "said"),
    [(OSError(5, "Input/output error"), "writing the checkpoint in .* failed: .*Input/output error"),
     (OSError(28, "No space left on device"), "no space left on the device of .*last_checkpoint while writing it")],
)  # fmt: skip
def test_a_background_write_that_fails_is_raised_in_training(tmp_path, monkeypatch, raised, said):
    from afqmc_exp.training import checkpoint

    def broken(*args, **kwargs):
        raise raised

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    trainer, _ = make_trainer(tmp_path, epochs=1, checkpoint_every=2, checkpoint_in_background=True)
    with pytest.raises(RuntimeError, match=said):
        trainer.fit()


def test_a_signal_checkpoints_then_stops_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    whole, whole_log = make_trainer(tmp_path / "whole", epochs=2, log_every=2, eval_every=5, checkpoint_every=4)
    expected = whole.fit()

    def stop_at_step_7(metrics, step):
        killed_log(metrics, step)
        if step == 7:
            killed.signals.requested = True  # as SIGTERM would

    killed, killed_log = make_trainer(tmp_path / "killed", epochs=2, log_every=1, eval_every=5, checkpoint_every=4)
    killed.metrics.log_metrics = stop_at_step_7
    with pytest.raises(KeyboardInterrupt, match="resume="):
        killed.fit()
    assert has_last_checkpoint(tmp_path / "killed" / "run")
    resumed, resumed_log = make_trainer(tmp_path / "killed", epochs=2, log_every=2, eval_every=5, checkpoint_every=4)
    resumed.pretrained.model.bert.embeddings.word_embeddings.weight.data.zero_()  # the checkpoint must restore it
    result = resumed.fit(resume=True)
    assert resumed_log.steps("train/loss")[0] == 8 and result.steps == expected.steps == 20
    assert resumed_log.values("dev/loss") == whole_log.values("dev/loss")[1:]  # after step 5, identical
    assert result.best_metric == expected.best_metric and result.best_step == expected.best_step
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_signal_that_arrives_as_a_step_decides_whether_to_checkpoint_still_stops_after_a_checkpoint(tmp_path):
    """The handler sets ``requested`` whenever the signal comes: one arriving after a step's checkpoint was judged
    not due, and before the step's stop check, stopped the run with its last checkpoint steps behind (CI met it:
    "SIGTERM received: saving a checkpoint" and no checkpoint)."""
    trainer, _ = make_trainer(tmp_path, epochs=2, log_every=1, eval_every=None, checkpoint_every=4)
    save = trainer.checkpointer.save

    def signal_right_after_the_decision(step, **kwargs):
        started = save(step, **kwargs)
        if step == 7:
            trainer.signals.requested = True  # SIGTERM, between the decision and the check
        return started

    trainer.checkpointer.save = signal_right_after_the_decision
    with pytest.raises(KeyboardInterrupt, match="stopped by a signal at step 8"):
        trainer.fit()
    state = torch.load(RunFolder(tmp_path / "run").last_checkpoint / TRAINER_STATE, weights_only=True)["state"]
    assert state["step"] == 8  # the step it stopped after: nothing trained is lost


def test_a_non_finite_loss_stops_training_with_what_to_change(tmp_path):
    trainer, _ = make_trainer(tmp_path, lr=1e30, max_grad_norm=None, log_every=1)
    with pytest.raises(NonFiniteLossError, match="lower optim.lr"):
        trainer.fit()


def test_training_window_excludes_paused_time_and_restarts_at_each_flush():
    class Clock:  # the window's clock, set by the test: seconds as perf_counter counts them
        now = 100.0

        def __call__(self):
            return self.now

    class OneProcess:
        def reduce(self, tensor, reduction):
            return tensor

    clock = Clock()
    window = TrainingWindow(torch.device("cpu"), loss=6.0, pairs=2, clock=clock)  # resumed: 2 pairs summed already
    window.add(torch.tensor(4.0), 8)
    clock.now = 101.0
    with window.paused():  # an evaluation, 101 -> 103
        clock.now = 103.0
    clock.now = 104.0
    assert window.flush(OneProcess()) == (1.0, 8 / 2.0)  # (6 + 4) / 10 pairs; 8 pairs in 4 s less 2 paused
    assert window.pairs == 0 and window.loss.item() == 0.0
    window.add(torch.tensor(1.0), 3)
    with window.paused():  # 104 -> 107
        clock.now = 107.0
    clock.now = 110.0
    assert window.flush(OneProcess()) == (1.0 / 3, 3 / 3.0)  # a new window: 104 -> 110 less 3 paused
    assert window.total_samples == 11 and window.paused_seconds == 5.0 and window.train_seconds() == 5.0


def test_profiling_a_few_steps_leaves_a_trace_an_operator_table_and_a_summary(tmp_path):
    trainer, _ = make_trainer(tmp_path, epochs=1, profile_steps=3, profile_skip=2)
    trainer.fit()
    folder = tmp_path / "run" / "profile"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["wall_s"] > 0 and "gpu_busy" not in summary  # no GPU here
    assert "traceEvents" in json.loads((folder / "trace.json").read_text())
    assert "Self CPU" in (folder / "operators.txt").read_text()


@pytest.mark.slow  # compiling takes a minute on a CPU
@pytest.mark.parametrize("scope,mode", [("layers", "reduce-overhead"), ("model", "default")])
def test_a_compiled_model_trains_like_the_eager_one_with_one_compilation_for_every_width(
    tmp_path, monkeypatch, scope, mode
):
    """trainer.compile: the same losses and weights as eager over a few steps, up to rounding (dropout off:
    compiled code draws its own random masks), in place (parameter names unchanged). Batches of many
    widths (no padding to a multiple), yet each compiled module is compiled once for training. (On a CPU
    reduce-overhead compiles without CUDA graphs; the loop's marks between iterations still run.)"""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch._dynamo.reset()
    counters.clear()
    runs = {}
    for name, compile_mode in (("no", "no"), ("compiled", mode)):
        trainer, logged = make_trainer(tmp_path / name, dropout=0.0, max_steps=6, log_every=1, compile=compile_mode,
                                       compile_scope=scope)  # fmt: skip
        trainer.fit()
        runs[name] = (trainer, logged.values("train/loss"))
    model = runs["compiled"][0].pretrained.model
    layers = list(model.bert.encoder.layer)
    compiled = [m for m in [model, *layers] if m._compiled_call_impl is not None]
    assert compiled == (layers if scope == "layers" else [model])
    widths = {len(batch["input_ids"][0]) for batch in runs["compiled"][0].train_loader}
    assert len(widths) > 3  # the batches really came in several widths...
    assert counters["stats"]["unique_graphs"] <= 2  # ...and were compiled once (training), plus evaluation
    assert any((tmp_path / "cache" / "inductor").iterdir())  # the kernels are kept for the next run (see cache)
    assert [step for step, _ in runs["compiled"][1]] == [1, 2, 3, 4, 5, 6]
    for (_, eager), (_, compiled_loss) in zip(runs["no"][1], runs["compiled"][1], strict=True):
        assert compiled_loss == pytest.approx(eager, rel=1e-4)
    eager_weights = runs["no"][0].pretrained.model.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, eager_weights[name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("regularizer", ["none", "fgm", "pgd", "rdrop"])
def test_a_training_step_makes_no_host_sync(tmp_path, regularizer):
    """On a GPU, every read of a tensor's value on the host waits for all queued kernels; between two logged
    steps the loop, the model's forward (see inference.model_inputs), the regularizers, clipping, the
    optimizer and the weight average read none, so the CPU can queue ahead of the GPU."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    trainer, _ = make_trainer(
        tmp_path, max_steps=4, log_every=100, checkpoint_minutes=None, eval_every=100, ema_decay=0.9
    )
    trainer.regularizer = instantiate(OmegaConf.load(REPO / "conf" / "regularizer" / f"{regularizer}.yaml"))
    steps, train_batch = [], trainer._train_batch

    def watched(batch):
        with HostSyncs() as syncs:
            took_step = train_batch(batch)
        steps.append(syncs.calls)
        return took_step

    trainer._train_batch = watched
    trainer.fit()
    assert len(steps) == 4 and steps == [[]] * 4, steps


def test_a_best_model_left_between_two_renames_is_put_back_when_the_run_goes_on(tmp_path):
    """The resumed run takes its folder (``run.taken``) before the trainer reads it: the swap is put right there."""
    import os
    import shutil

    from afqmc_exp.training.run import taken

    trainer, _ = make_trainer(tmp_path, epochs=1, checkpoint_every=4)
    trainer.fit()
    best = tmp_path / "run" / "best_model"
    os.replace(best, best.with_name(".best_model.old"))  # the state a kill between the two renames leaves
    shutil.copytree(best.with_name(".best_model.old"), best.with_name(".best_model.tmp"))
    again, _ = make_trainer(tmp_path, epochs=1, checkpoint_every=4)
    with taken(RunFolder(tmp_path / "run")):
        assert (best / "model.safetensors").exists()  # put back before the trainer reads the folder
        again.fit(resume=True)
    assert read_meta(best)["step"] >= 1 and (best / "model.safetensors").exists()


def test_a_run_resumed_after_its_last_evaluation_reports_no_evaluation_speed(tmp_path):
    """Killed while its outputs were written: the resumed fit evaluates nothing, so it has no speed to report (not
    a null in result.json)."""
    settings = {"epochs": 1, "eval_every": 5, "checkpoint_every": 5}  # step 10, the last: evaluated, then saved
    make_trainer(tmp_path, **settings)[0].fit()
    again, logged = make_trainer(tmp_path, **settings)
    result = again.fit(resume=True)
    assert result.steps == 10 and logged.steps("dev/f1") == []
    assert "eval_samples_per_s" not in result.speed and None not in result.speed.values()


@pytest.mark.parametrize(
    "regularizer",
    ["fgm", "pgd", "rdrop"],
)
def test_each_regularizer_trains_with_gradient_accumulation(tmp_path, regularizer):
    from afqmc_exp.training.regularizers import FGM, PGD, RDrop

    chosen = {"fgm": FGM(epsilon=0.5), "pgd": PGD(epsilon=0.5, alpha=0.2, steps=2), "rdrop": RDrop(alpha=1.0)}
    trainer, logged = make_trainer(tmp_path, epochs=1, grad_accumulation=2, log_every=1)
    trainer.regularizer = chosen[regularizer]
    before = trainer.pretrained.model.bert.embeddings.word_embeddings.weight.detach().clone()
    result = trainer.fit()
    assert result.steps == 5 and all(0 < loss < 5 for _, loss in logged.values("train/loss"))
    after = trainer.pretrained.model.bert.embeddings.word_embeddings.weight.detach()
    assert not torch.equal(before, after)  # trained (and not left moved: the test for that is in test_tricks)


def test_ema_is_evaluated_saved_and_resumed_exactly(tmp_path):
    from safetensors.torch import load_file

    whole, whole_log = make_trainer(tmp_path / "whole", epochs=2, ema_decay=0.9, log_every=2, eval_every=5,
                                    checkpoint_every=4)  # fmt: skip
    expected = whole.fit()
    best = load_file(expected.best_dir / "model.safetensors")
    raw = whole.pretrained.model.state_dict()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(best[name], raw[name])  # the saved best weights are the average's, not the raw ones

    def stop_at_step_7(metrics, step):
        if step == 7:
            killed.signals.requested = True

    killed, _ = make_trainer(
        tmp_path / "killed", epochs=2, ema_decay=0.9, log_every=1, eval_every=5, checkpoint_every=4
    )
    killed.metrics.log_metrics = stop_at_step_7
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed, resumed_log = make_trainer(tmp_path / "killed", epochs=2, ema_decay=0.9, log_every=2, eval_every=5,
                                        checkpoint_every=4)  # fmt: skip
    resumed.fit(resume=True)
    assert resumed_log.values("dev/loss") == whole_log.values("dev/loss")[1:]  # evaluated on the averages: equal
    for (key, a), b in zip(whole.ema.state_dict().items(), resumed.ema.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("bar", [True, False])
def test_the_progress_line_stays_off_a_terminal_that_draws_the_bar_and_always_reaches_the_log_file(
    bar, tmp_path, monkeypatch, caplog
):
    """On a real terminal (a pseudo-terminal here) the bar is drawn and the step line kept off it; the log file gets
    the line either way, and with no bar the terminal gets it too."""
    import fcntl
    import logging
    import os
    import pty
    import select
    import struct
    import sys
    import termios

    from afqmc_exp.training.progress import Progress, duration

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    terminal_file = os.fdopen(slave, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", terminal_file)  # where tqdm draws its bar, as a run on a terminal has it
    caplog.set_level("INFO", logger="afqmc_exp.training.progress")
    terminal, log_file = logging.StreamHandler(terminal_file), logging.FileHandler(tmp_path / "train.log")
    root = logging.getLogger()
    root.addHandler(terminal), root.addHandler(log_file)
    try:
        progress = Progress(10, 0, show_bar=bar)
        progress.step()
        progress.report(1, 0.5, 1e-5, 40.0)
        progress.close()
        terminal_file.flush()
        shown = b""
        while select.select([master], [], [], 0)[0]:  # what the terminal received (written already: no waiting)
            shown += os.read(master, 65536)
    finally:
        root.removeHandler(terminal), root.removeHandler(log_file)
        log_file.close(), terminal_file.close(), os.close(master)
    on_terminal = shown.decode(errors="replace")
    assert ("train:" in on_terminal) is bar and ("step 1/10 (10%) loss 0.5000" in on_terminal) is not bar
    assert "step 1/10 (10%) loss 0.5000" in (tmp_path / "train.log").read_text()
    assert (duration(70), duration(3 * 3600 + 120)) == ("1m10s", "3h02m")


def test_weights_and_checkpoints_are_written_with_the_umasks_permissions(tmp_path):
    """safetensors 0.8 writes its files readable by their owner only: a teammate could not read a shared run's
    weights. Everything the trainer saves gets what the umask gives, as the rest of the run folder does."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        trainer, _ = make_trainer(tmp_path, epochs=1, checkpoint_every=5)
        result = trainer.fit()
    finally:
        os.umask(previous)
    saved = [*result.best_dir.iterdir(), *(tmp_path / "run" / "last_checkpoint").iterdir()]
    assert {"model.safetensors", "trainer_state.pt", "afqmc_exp.json"} <= {p.name for p in saved}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in saved} == {p.name: "0o644" for p in saved}
    assert oct(stat.S_IMODE(result.best_dir.stat().st_mode)) == "0o755"


def signalled_at_step(trainer, logged, step, *signals):
    """``trainer``'s log callback, which sends itself ``signals`` (as a user's Ctrl-C would arrive) at ``step``."""
    import os

    def log_and_signal(metrics, at):
        logged(metrics, at)
        if at == step and "train/loss" in metrics:
            for signum in signals:
                os.kill(os.getpid(), signum)

    logged.log_metrics = log_and_signal


def test_one_ctrl_c_saves_a_checkpoint_then_stops(tmp_path):
    import signal

    trainer, logged = make_trainer(tmp_path, epochs=2, log_every=1, checkpoint_every=None, checkpoint_minutes=None)
    signalled_at_step(trainer, logged, 3, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=r"stopped by a signal at step 3; continue it: python train.py resume="):
        trainer.fit()
    assert has_last_checkpoint(tmp_path / "run")  # resumable from step 3
    assert torch.load(tmp_path / "run" / "last_checkpoint" / "trainer_state.pt", weights_only=True)["state"][
        "step"] == 3  # fmt: skip


def test_a_second_ctrl_c_stops_at_once_without_the_checkpoint(tmp_path):
    import signal

    trainer, logged = make_trainer(tmp_path, epochs=2, log_every=1, checkpoint_every=None, checkpoint_minutes=None)
    signalled_at_step(trainer, logged, 3, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.fit()
    assert "stopped by a signal" not in str(stopped.value)  # not the trainer's orderly stop after a checkpoint
    assert not has_last_checkpoint(tmp_path / "run") and logged.steps("train/loss")[-1] == 3
