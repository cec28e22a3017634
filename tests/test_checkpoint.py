"""The last checkpoint (``training/checkpoint.py``): atomic swaps of its folder (and their repair), background writes,
nothing in its files ever executed; and the checkpointer: when a checkpoint is due (every N steps, at a logged step
once the minutes have passed, at an epoch's end when either is set, always on a signal) and what it saves, on a real
tiny model into tmp_path, with a clock of the test's own."""

import errno
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from afqmc_exp import files
from afqmc_exp.run_folder import RunFolder
from afqmc_exp.training import checkpoint
from afqmc_exp.training.checkpoint import CheckpointContents, Checkpointer, TrainState, load_last_checkpoint
from afqmc_exp.training.hardware import build_accelerator


def checkpointer_of(run_dir) -> checkpoint.Checkpointer:
    """The checkpointer of the run folder ``run_dir`` (its cadence does not matter here)."""
    return checkpoint.Checkpointer(RunFolder(run_dir).last_checkpoint, every=None, minutes=None, background=False,
                                   accelerator=None)  # fmt: skip


def test_resume_never_unpickles_code(tmp_path):
    """A tampered trainer_state.pt is refused: it is read with torch.load(weights_only=True)."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = tmp_path / "last_checkpoint"
    folder.mkdir()
    with open(folder / "trainer_state.pt", "wb") as f:
        pickle.dump({"state": Evil()}, f)
    model = torch.nn.Linear(2, 2)
    save_file(model.state_dict(), folder / "model.safetensors")

    class Plain:
        def unwrap_model(self, m):
            return m

    from afqmc_exp.training.checkpoint import CheckpointDamaged

    with pytest.raises(CheckpointDamaged, match="the last checkpoint is damaged .*Weights only load failed") as refused:
        load_last_checkpoint(folder, model, None, None, Plain())
    assert isinstance(refused.value.__context__, pickle.UnpicklingError)
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------ atomic swaps
def write_version(target, text):
    with files.atomic_dir(target) as staging:
        (staging / "version.txt").write_text(text)


def test_a_swap_replaces_the_folder_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "best_model"
    write_version(target, "1")
    write_version(target, "2")
    assert (target / "version.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]


def test_a_full_disk_mid_write_keeps_the_previous_version_and_says_so(tmp_path):
    target = tmp_path / "best_model"
    write_version(target, "1")
    with pytest.raises(files.NoSpaceLeft, match="no space left on the device of .*best_model while writing "
                       "it; the previous best_model is intact"):  # fmt: skip
        with files.atomic_dir(target) as staging:
            (staging / "version.txt").write_text("2, half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (target / "version.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]  # the partial copy is gone


def test_a_full_disk_is_recognised_through_the_errors_safetensors_and_torch_raise():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0") from cause
    except RuntimeError as wrapped:
        assert files.disk_full(wrapped)
    assert files.disk_full(Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                          'message: "No space left on device" })'))  # fmt: skip
    assert not files.disk_full(RuntimeError("CUDA out of memory"))


def test_a_symlinked_folder_is_swapped_where_it_points_and_stays_a_link(tmp_path):
    elsewhere, link = tmp_path / "big_disk" / "best_model", tmp_path / "run" / "best_model"
    elsewhere.parent.mkdir()
    link.parent.mkdir()
    write_version(elsewhere, "1")
    link.symlink_to(elsewhere)
    write_version(link, "2")
    assert link.is_symlink() and (elsewhere / "version.txt").read_text() == "2"
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == ["best_model"]


def test_a_finished_run_removes_a_symlinked_last_checkpoint_where_it_points(tmp_path):
    elsewhere, link = tmp_path / "big_disk" / "last_checkpoint", tmp_path / "run" / "last_checkpoint"
    elsewhere.parent.mkdir()
    link.parent.mkdir()
    write_version(elsewhere, "1")
    link.symlink_to(elsewhere)
    checkpointer_of(link.parent).remove()
    assert not elsewhere.exists() and not link.is_symlink() and not checkpointer_of(link.parent).exists()


def test_on_linux_a_swap_is_one_atomic_exchange(tmp_path, monkeypatch):
    if files._RENAMEAT2 is None:
        pytest.skip("no renameat2 on this system: swaps use two renames and recover()")

    def never(target):
        raise AssertionError("the two-rename fallback ran")

    monkeypatch.setattr(files, "_between_renames", never)
    write_version(tmp_path / "best_model", "1")
    write_version(tmp_path / "best_model", "2")
    assert (tmp_path / "best_model" / "version.txt").read_text() == "2"


def test_a_kill_between_the_two_renames_is_repaired_with_the_newer_version(tmp_path, monkeypatch):
    """Where the one-call exchange is missing, the swap is two renames; a kill between them (simulated
    here by the test hook raising) leaves no folder, and the run that takes the folder next puts the new version
    back before anything reads it."""
    from afqmc_exp.training.run import taken

    target = tmp_path / "last_checkpoint"
    write_version(target, "1")

    def killed(target):
        raise SystemExit("killed between the renames")

    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    monkeypatch.setattr(files, "_between_renames", killed)
    with pytest.raises(SystemExit):
        write_version(target, "2")
    assert not target.exists() and (tmp_path / ".last_checkpoint.old").exists()
    (tmp_path / ".last_checkpoint.tmp" / checkpoint.TRAINER_STATE).write_text("")  # what exists() looks for
    with taken(RunFolder(tmp_path)):
        assert checkpointer_of(tmp_path).exists()
    assert (target / "version.txt").read_text() == "2"
    monkeypatch.setattr(files, "_between_renames", lambda target: None)
    write_version(target, "3")  # and swaps go on as usual
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != ".run.lock")  # the lock's file stays
    assert (target / "version.txt").read_text() == "3" and left == ["last_checkpoint"]


def test_a_reader_that_puts_a_swap_right_between_the_two_renames_does_not_fail_the_writer(tmp_path, monkeypatch):
    """Where a swap is two renames, evaluate or predict reading the best weights of a live run may meet the folder
    missing and move the new version in itself (``recover``); the run's own second rename must not then fail it."""
    target = tmp_path / "best_model"
    write_version(target, "1")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    monkeypatch.setattr(files, "_between_renames", files.recover)  # the reader, between the writer's two renames
    write_version(target, "2")
    assert (target / "version.txt").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]


def test_a_reader_whose_swap_the_writer_finishes_first_leaves_the_new_version(tmp_path, monkeypatch):
    """The other order: evaluate or predict meets the folder missing and the new version not yet in place, so it
    restores the old one; the writing run's second rename lands just before. The reader takes that as done."""
    target = tmp_path / "best_model"
    write_version(target, "1")
    os.rename(target, tmp_path / ".best_model.old")  # the writer's first rename; its second comes in between
    replace = os.replace

    def writer_first(source, destination):
        target.mkdir()
        (target / "version.txt").write_text("2")
        replace(source, destination)

    monkeypatch.setattr(files.os, "replace", writer_first)
    files.recover(target)
    assert (target / "version.txt").read_text() == "2"


def test_an_unfinished_first_version_is_not_taken_for_a_checkpoint(tmp_path):
    (tmp_path / ".last_checkpoint.tmp").mkdir()  # killed while writing the very first checkpoint
    assert not checkpointer_of(tmp_path).exists()


# ------------------------------------------------------------------------------------ background writes
def test_a_background_checkpoint_holds_the_state_of_when_it_was_taken(tmp_path, monkeypatch):
    """Training goes on changing the weights while the writer thread works: the files must hold the
    weights as they were when ``save`` returned, and ``wait`` makes them complete."""
    import threading

    from accelerate import Accelerator
    from safetensors.torch import load_file

    release, real_save = threading.Event(), checkpoint.torch.save

    def slow_save(*args, **kwargs):
        release.wait(timeout=30)
        real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", slow_save)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    writer = checkpoint.CheckpointWriter(tmp_path / "last_checkpoint")
    writer.save(model, optimizer, scheduler, checkpoint.TrainState(step=7), Accelerator(cpu=True))
    with torch.no_grad():  # the next training step, while the writer waits
        model.weight.add_(1.0)
    release.set()
    writer.wait()
    saved = load_file(tmp_path / "last_checkpoint" / checkpoint.WEIGHTS)
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    state = torch.load(tmp_path / "last_checkpoint" / checkpoint.TRAINER_STATE, weights_only=True)
    assert state["state"]["step"] == 7 and state["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)


def test_a_forked_process_is_refused_the_lock_its_parent_holds_in_one_line(tmp_path):
    """A child forked while its parent holds a run folder (a worker of a pool) is another process: refused
    (``InUse``), not a traceback about a lock inherited across the fork."""
    import multiprocessing

    from afqmc_exp.files import InUse, held, let_go, take

    def try_it(answers):
        try:
            with held(tmp_path / ".run.lock", "held by the parent"):
                answers.put("taken")
        except InUse as err:
            answers.put(f"refused: {err}")
        except Exception as err:  # any other: what the test reports
            answers.put(f"{type(err).__name__}: {err}")

    take(tmp_path / ".run.lock", "")
    try:
        fork = multiprocessing.get_context("fork")
        answers = fork.Queue()
        child = fork.Process(target=try_it, args=(answers,))
        child.start()
        said = answers.get(timeout=60)
        child.join(timeout=60)
    finally:
        let_go(tmp_path / ".run.lock")
    assert said == "refused: held by the parent"


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path):
    """The lock is held for the run's life; a second holder (another process, a requeued job) is refused."""
    from accelerate import Accelerator

    from afqmc_exp.files import InUse
    from afqmc_exp.training.run import taken
    from helpers import held_elsewhere

    with held_elsewhere(RunFolder(tmp_path).lock), pytest.raises(InUse, match="another process is running this run"):
        with taken(RunFolder(tmp_path), Accelerator(cpu=True)):
            pass
    with taken(RunFolder(tmp_path), Accelerator(cpu=True)):  # a killed holder released it
        pass


# ------------------------------------------------------------------------------------ the checkpointer: when, and what
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
