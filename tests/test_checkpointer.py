"""The trainer's checkpointer (``training/checkpoint.py``): when a last checkpoint is due (every N steps, at a
logged step once the minutes have passed, at an epoch's end when either is set, always on a signal) and what it
saves, on a real tiny model into tmp_path, with a clock of the test's own."""

import pytest
import torch

from afqmc_exp.training.checkpoint import CheckpointContents, Checkpointer, TrainState
from afqmc_exp.training.hardware import build_accelerator


class Clock:
    """Seconds, set by the test."""

    now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def parts():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def checkpointer(tmp_path, parts, clock=None, **cadence):
    """A checkpointer of ``cadence`` (every=, minutes=) whose saves are recorded by step."""
    model, optimizer, scheduler = parts
    state, flushed_at = TrainState(), []
    keeper = Checkpointer(
        tmp_path / "last_checkpoint",
        background=False,
        accelerator=build_accelerator(device="cpu"),
        before_save=lambda: flushed_at.append(state.step),  # the run's metrics flushed before each save
        clock=clock or Clock(),
        **{"every": None, "minutes": None, **cadence},
    )
    keeper.attach(CheckpointContents(model, optimizer, scheduler, state))
    return keeper, state, flushed_at  # fmt: skip


def has_last_checkpoint(folder) -> bool:
    return (folder / "last_checkpoint" / "trainer_state.pt").exists()


def test_every_n_steps_and_at_each_epochs_end(tmp_path, parts):
    keeper, state, saved = checkpointer(tmp_path, parts, every=4)
    for step in range(1, 11):
        state.step = step
        keeper.save(step, logged=step % 2 == 0)
    state.step = 10
    assert keeper.save(10, epoch_end=True)
    assert saved == [4, 8, 10] and has_last_checkpoint(tmp_path)


def test_by_the_clock_only_at_logged_steps_counting_from_the_last_save(tmp_path, parts):
    clock = Clock()
    keeper, state, saved = checkpointer(tmp_path, parts, clock=clock, minutes=1.0)
    for step, now, logged in [(1, 30, True), (2, 61, False), (3, 62, True), (4, 100, True), (5, 125, True)]:
        clock.now, state.step = now, step
        keeper.save(step, logged=logged)
    assert saved == [3, 5]  # step 2 was past the minute but not logged; then 62 + 60 = 122 <= 125


def test_minutes_count_from_the_restart_after_set_up(tmp_path, parts):
    clock = Clock()
    keeper, state, saved = checkpointer(tmp_path, parts, clock=clock, minutes=1.0)
    clock.now = 500.0  # minutes of set-up (a model download, a tokenizing) before the first step
    keeper.restart_clock()
    clock.now = 530.0
    assert not keeper.save(1, logged=True) and saved == []


def test_a_signal_always_saves_and_nothing_is_due_without_a_cadence(tmp_path, parts):
    keeper, state, saved = checkpointer(tmp_path, parts)
    for step in range(1, 5):
        state.step = step
        keeper.save(step, logged=True, epoch_end=step == 4)
    assert saved == [] and not has_last_checkpoint(tmp_path)
    state.step = 5
    assert keeper.save(5, stopping=True) and saved == [5]


def test_what_is_saved_is_what_load_restores(tmp_path, parts):
    model, optimizer, scheduler = parts
    keeper, state, _ = checkpointer(tmp_path, parts, every=1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    state.step, state.best, state.pairs_seen = 1, 0.75, 16
    keeper.save(1)
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.zero_()
    loaded, rng, extra = keeper.load(model, optimizer, scheduler)
    assert (loaded.step, loaded.best, loaded.pairs_seen) == (1, 0.75, 16) and extra == {} and "torch" in rng
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved_weights[name], rtol=0, atol=0)
