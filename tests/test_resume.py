"""Faults: a run killed with SIGKILL resumes to the same result; SIGTERM checkpoints and closes the run KILLED."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import AFQMC, REPO, SHORT_RUN, broken_model, launch, mlflow_runs, run_command

pytestmark = pytest.mark.slow  # real subprocess trainings (the trainer's phases are tested fast in test_trainer)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
FAULTY = [sys.executable, str(REPO / "tests" / "helpers" / "faulty_train.py")]
COMMON = [
    *SHORT_RUN,
    "trainer.max_steps=16",
    "trainer.eval_every=8",
    "trainer.checkpoint_every=3",
    "trainer.log_every=2",
    "seed=5",
]
MINILM = "model.name_or_path=${afqmc.minilm:}"  # MiniLM's own weights (SHORT_RUN trains helpers.TINY_MINILM's)


def start(cwd, *overrides, console=False):
    """train.py with ``overrides`` in ``cwd``; ``console``: its console (stdout) readable, line by line."""
    return launch([sys.executable, str(REPO / "train.py"), *overrides], cwd=cwd, env=ENV,
                  stdout=subprocess.PIPE if console else subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def histories(cwd):
    client, runs = mlflow_runs(cwd, "afqmc")
    assert len(runs) == 1
    run = runs[0]
    keys = ("train/loss", "train/lr", "dev/loss", "dev/accuracy", "dev/auc", "best/dev_accuracy")
    return run, {k: [(m.step, round(m.value, 9)) for m in client.get_metric_history(run.info.run_id, k)] for k in keys}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run, never killed."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    whole = start(folder, *COMMON, f"hydra.run.dir={folder / 'run'}")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-3000:]
    return folder


def resume_and_compare(folder, out, reference, by_run_id=False):
    """``resume=`` the killed run (by its folder, or by its MLflow run id), then compare it with ``reference``."""
    target = (out / "mlflow_run_id").read_text().strip() if by_run_id else out
    resumed = start(folder, f"resume={target}", "hydra.run.dir=" + str(folder / "resume_logs"))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    compare(folder, out, reference)


def compare(folder, out, reference):
    """The run in ``out`` (its store in ``folder``) ended as the uninterrupted one did: every step logged once."""
    run_a, a = histories(reference)
    run_b, b = histories(folder)
    assert run_b.info.status == "FINISHED"
    assert [s for s, _ in b["train/loss"]] == list(range(2, 17, 2))  # every step once: none lost, none twice
    assert b == a
    result_a = json.loads((reference / "run" / "result.json").read_text())
    result_b = json.loads((out / "result.json").read_text())
    for key in ("best_metric", "final/dev_accuracy", "final/dev_f1", "final/dev_auc", "final/dev_loss"):
        assert result_b[key] == pytest.approx(result_a[key], abs=1e-9), key
    assert result_b["mlflow_run_id"] == run_b.info.run_id


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path, uninterrupted):
    """Killed right after step 5: between the checkpoints of steps 3 and 6, after the logged step 4."""
    out = tmp_path / "run"
    killed = run_command([*FAULTY, "kill-at-step", "5", *COMMON, f"hydra.run.dir={out}"], cwd=tmp_path, env=ENV)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "result.json").exists()
    _, before = histories(tmp_path)
    assert before["train/loss"] and before["train/loss"][-1][0] < 16  # killed part-way: resume has work to do
    resume_and_compare(tmp_path, out, uninterrupted)


@pytest.mark.parametrize("fault", ["mid-write", "between-renames"])
def test_a_kill_inside_a_checkpoint_write_still_resumes_exactly(tmp_path, uninterrupted, fault):
    """Killed in the 3rd checkpoint write (step 9): mid-write in the background thread the previous checkpoint
    (step 6) is intact; between the two renames of a swap the new one is put back. Either way the run ends
    as if never killed (resumed by its MLflow run id, mid-write; by its folder, between the renames)."""
    out = tmp_path / "run"
    killed = run_command([*FAULTY, fault, "3", *COMMON, "trainer.checkpoint_in_background=true",  # as on a GPU
                          f"hydra.run.dir={out}"], cwd=tmp_path, env=ENV, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    if fault == "between-renames":
        assert not (out / "last_checkpoint").exists() and (out / ".last_checkpoint.old").exists()
    resume_and_compare(tmp_path, out, uninterrupted, by_run_id=fault == "mid-write")  # the id's tag finds the folder


def test_the_same_command_again_continues_a_killed_run_and_never_rewrites_a_finished_one(tmp_path, uninterrupted):
    """A requeued job (the same command, hydra.run.dir fixed): killed after step 5 (its step-3 checkpoint on disk),
    the command again continues it in its MLflow run, as resume= would; once finished, the command again is refused
    and nothing in the folder changes."""
    out = tmp_path / "run"
    command = [sys.executable, str(REPO / "train.py"), *COMMON, f"hydra.run.dir={out}"]
    killed = run_command([*FAULTY, "kill-at-step", "5", *command[2:]], cwd=tmp_path, env=ENV)  # the same overrides
    assert killed.returncode == -signal.SIGKILL and (out / "last_checkpoint").exists(), killed.stderr[-3000:]
    again = run_command(command, cwd=tmp_path, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "started with this same config: continuing it, as resume=" in again.stdout  # said before its log file
    assert f"resuming {out} with its saved config" in (out / "train.log").read_text()
    compare(tmp_path, out, uninterrupted)  # one MLflow run, FINISHED, each step once, the uninterrupted result
    kept = {p: p.read_bytes() for p in [out / "result.json", *(out / "best_model").iterdir()]}
    third = run_command(command, cwd=tmp_path, env=ENV)
    assert third.returncode == 1 and "Traceback" not in third.stderr, third.stderr[-3000:]
    assert third.stderr.strip().splitlines()[-1].startswith(f"error: hydra.run.dir={out}: holds a finished run")
    assert {p: p.read_bytes() for p in kept} == kept
    compare(tmp_path, out, uninterrupted)


def killed_after_its_first_checkpoint(tmp_path) -> Path:
    """The folder of a 4-step run killed (SIGKILL) right after step 4, its step-3 last checkpoint on disk."""
    out = tmp_path / "run"
    killed = run_command([*FAULTY, "kill-at-step", "4", *COMMON, "trainer.max_steps=4", "trainer.eval_every=null",
                          f"hydra.run.dir={out}"], cwd=tmp_path, env=ENV)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL and (out / "last_checkpoint").exists(), killed.stderr[-3000:]
    return out


def said(proc, wanted: str = "step 2/") -> None:
    """Read the run's console (Hydra's, on stdout) until it says ``wanted`` (by default: training has logged a
    step), so a signal sent next meets the run's handlers, whatever the machine's speed."""
    for line in proc.stdout:
        if wanted in line:
            return
    raise AssertionError(f"the run ended before saying {wanted!r}: {proc.stderr.read()[-3000:]}")


def test_sigterm_saves_a_checkpoint_and_marks_the_run_killed(tmp_path):
    out = tmp_path / "run"
    proc = start(
        tmp_path,
        *COMMON,
        "trainer.max_steps=null",  # epochs of AFQMC (thousands of steps): a loaded machine's reader cannot fall
        "trainer.eval_every=null",  # so far behind that the run ends before the signal (it did in CI: no checkpoint)
        "trainer.checkpoint_every=5000",
        MINILM,  # minutes an epoch: TINY_MINILM's epochs of AFQMC can end before a loaded machine's reader sees step 2
        f"hydra.run.dir={out}",
        console=True,
    )
    said(proc)
    proc.send_signal(signal.SIGTERM)
    console, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "SIGTERM received: saving a checkpoint and stopping" in console, err[-3000:]
    import torch

    state = torch.load(out / "last_checkpoint" / "trainer_state.pt", weights_only=True)["state"]
    assert 0 < state["step"] < 5000
    run, metrics = histories(tmp_path)
    assert run.info.status == "KILLED"
    assert metrics["train/loss"][-1][0] <= state["step"]


def test_nan_loss_stops_the_run_failed_with_a_message(tmp_path):
    from helpers import train

    with pytest.raises(SystemExit, match=r"^error: training loss is (nan|inf) at step \d+; lower optim.lr") as stop:
        train(
            [
                "model=minilm",
                f"data.dir={AFQMC}",
                "data.test_file=null",
                "data.max_length=48",
                "optim.lr=1e30",
                "trainer.max_grad_norm=null",
                "trainer.max_steps=6",
                "trainer.log_every=2",
                "trainer.device=cpu",
                "trainer.progress_bar=false",
            ],
            tmp_path,
        )
    assert len(str(stop.value).splitlines()) == 1
    _, runs = mlflow_runs(tmp_path, "afqmc")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_second_command_in_a_running_runs_folder_is_refused_and_touches_nothing(tmp_path):
    """A fixed hydra.run.dir started twice, the second time with another setting: the second command is refused in one
    line; the first run's saved config and log stay its own, and it goes on (here until a SIGTERM stops it)."""
    out = tmp_path / "run"
    running = [*COMMON, "trainer.max_steps=null", "trainer.eval_every=null", "trainer.checkpoint_every=5000",
               f"hydra.run.dir={out}"]  # fmt: skip
    first = start(tmp_path, *running, console=True)
    try:
        said(first)
        config = (out / ".hydra" / "config.yaml").read_text()
        second = run_command([sys.executable, str(REPO / "train.py"), *running, "optim.lr=1e-4"], cwd=tmp_path)
        assert second.returncode == 1 and second.stderr.strip().splitlines()[-1] == (
            f"error: hydra.run.dir={out}: another process is running a run in this folder (the same command started "
            "twice?); nothing was written there: give a new hydra.run.dir, or wait for it to end"
        )
        assert (out / ".hydra" / "config.yaml").read_text() == config and first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        console, err = first.communicate(timeout=120)
    assert "SIGTERM received: saving a checkpoint and stopping" in console, err[-3000:]
    assert (out / "last_checkpoint" / "trainer_state.pt").exists()  # the first run's own, resumable


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    # fails fast, after Hydra made its folder and the MLflow run opened (a refused run would leave no folder)
    broken = broken_model(tmp_path / "broken")
    cmd = [sys.executable, str(REPO / "train.py"), *SHORT_RUN, f"model.name_or_path={broken}"]
    procs = [launch(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    for p in procs:
        p.wait(timeout=120)
    folders = list((tmp_path / "outputs").glob("*/*"))
    assert len(folders) == 3


def test_a_second_ctrl_c_stops_at_once_and_the_run_is_killed(tmp_path):
    """The second Ctrl-C is sent once the first one's line is out: the run stops before the checkpoint the first
    one asked for, and its MLflow run is closed KILLED (one Ctrl-C alone would save that checkpoint)."""
    out = tmp_path / "run"
    proc = start(
        tmp_path,
        *COMMON,
        "trainer.max_steps=400",
        "trainer.eval_every=null",
        "trainer.checkpoint_every=null",
        "data.batch_size=64",  # a step of some length: the second Ctrl-C lands inside it
        f"hydra.run.dir={out}",
        console=True,
    )
    said(proc)
    proc.send_signal(signal.SIGINT)
    said(proc, "SIGINT received: saving a checkpoint and stopping")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (out / "last_checkpoint").exists()  # stopped at once: the first Ctrl-C's checkpoint never written
    run, _ = histories(tmp_path)
    assert run.info.status == "KILLED"


def test_resume_of_a_finished_run_says_so_and_touches_nothing(uninterrupted):
    out = uninterrupted / "run"
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and ".tracking" not in p.parts}
    run_before, metrics_before = histories(uninterrupted)
    proc = run_command([sys.executable, str(REPO / "train.py"), f"resume={out}",
                        f"hydra.run.dir={uninterrupted / 'again'}"], cwd=uninterrupted)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "this run finished" in line]
    assert len(said) == 1 and str(out) in said[0] and "nothing to resume" in said[0]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # no weight, prediction or plot rewritten
    run_after, metrics_after = histories(uninterrupted)
    assert metrics_after == metrics_before and run_after.info.status == "FINISHED"
    assert run_after.info.end_time == run_before.info.end_time


def test_a_damaged_checkpoint_is_one_line_and_moved_aside_the_run_starts_over_in_itself(tmp_path):
    """A checkpoint cut short by a crash of the machine: resume says what is damaged and how to go on; with the
    checkpoint moved aside it starts again from step 0 in the same folder and MLflow run, and says so."""
    out = tmp_path / "run"
    command = [sys.executable, str(REPO / "train.py"), *COMMON, "trainer.max_steps=4", f"hydra.run.dir={out}"]
    done = run_command([*command, "trainer.keep_last_checkpoint=true"], cwd=tmp_path, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "result.json").unlink()  # as if killed after its last checkpoint
    weights = out / "last_checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    refused = run_command([sys.executable, str(REPO / "train.py"), f"resume={out}"], cwd=tmp_path, env=ENV)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert lines[-1].startswith(f"error: {out / 'last_checkpoint'}: the last checkpoint is damaged")
    assert "move it aside (mv " in lines[-1] and "and resume again" in lines[-1]
    (out / "last_checkpoint").rename(out / "last_checkpoint.damaged")
    again = run_command([sys.executable, str(REPO / "train.py"), f"resume={out}"], cwd=tmp_path, env=ENV)
    assert again.returncode == 0 and (out / "result.json").exists(), again.stderr[-3000:]
    assert (
        "has no last checkpoint: training starts again from step 0, in the same run" in (out / "train.log").read_text()
    )
    _, runs = mlflow_runs(tmp_path, "afqmc")
    assert len(runs) == 1 and runs[0].data.tags["resume.restarted_from_step_0"] == "true"
    assert runs[0].info.status == "FINISHED"


@pytest.mark.parametrize("journaled", [0, 4, 8])  # 8: the registry version journaled (and maybe delivered)
def test_a_run_killed_after_its_result_before_its_mlflow_run_closed_is_completed_by_resume(tmp_path, journaled):
    """Killed once result.json is on disk, with none or some of the finishing records journaled: resume records
    the finish from the run folder (final metrics, files, weights, one registered version) and closes it
    FINISHED, rewriting nothing in the folder."""
    out = tmp_path / "run"
    killed = run_command([sys.executable, REPO / "tests" / "helpers" / "faulty_train.py", "unrecorded", journaled,
                          *COMMON, "trainer.max_steps=4", "tracking.log_weights=true", "tracking.register_as=pairs",
                          f"hydra.run.dir={out}"], cwd=tmp_path, env=ENV)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL and (out / "result.json").exists(), killed.stderr[-3000:]
    client, runs = mlflow_runs(tmp_path, "afqmc")
    assert runs[0].info.status == "RUNNING" and "final/dev_accuracy" not in runs[0].data.metrics
    assert ('"op": "register"' in (out / ".tracking" / "journal.jsonl").read_text()) == (journaled == 8)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and ".tracking" not in p.parts}
    resumed = run_command([sys.executable, REPO / "train.py", f"resume={out}"], cwd=tmp_path, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "was never closed: recording its finish from the folder" in resumed.stderr + resumed.stdout
    run = client.get_run(runs[0].info.run_id)
    result = json.loads((out / "result.json").read_text())
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final/dev_accuracy"] == pytest.approx(result["final/dev_accuracy"])
    assert "Best dev accuracy" in run.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"result.json", "dev_predictions.jsonl", "train.log", "best_model", "hydra", "plots"} <= artifacts
    assert len(client.search_model_versions("name='pairs'")) == 1  # not registered twice
    assert [m.step for m in client.get_metric_history(run.info.run_id, "final/dev_accuracy")] == [4]
    assert {p: p.stat().st_mtime_ns for p in files} == files


def test_a_full_disk_while_writing_better_weights_is_one_line_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    full = run_command([sys.executable, REPO / "tests" / "helpers" / "faulty_train.py", "disk-full", 2, *COMMON,
                        "trainer.eval_every=2", MINILM,  # its dev accuracy improves: a second save, to fail
                        f"hydra.run.dir={out}"], cwd=tmp_path, env=ENV)  # fmt: skip
    last = full.stderr.strip().splitlines()[-1]
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    said = f"error: no space left on the device of {out / 'best_model'} while writing it; the previous best_model"
    assert last.startswith(f"{said} is intact") and last.endswith(f"python train.py resume={out}")
    assert (out / "best_model" / "config.json").exists() and not (out / ".best_model.tmp").exists()
    _, runs = mlflow_runs(tmp_path, "afqmc")
    assert runs[0].info.status == "FAILED"
    resumed = run_command([sys.executable, REPO / "train.py", f"resume={out}"], cwd=tmp_path, env=ENV)
    assert resumed.returncode == 0 and (out / "result.json").exists(), resumed.stderr[-3000:]


OLD_TARGETS = {  # as configs saved before afqmc_exp's modules moved into folders name them
    "afqmc_exp.training.optim.": "afqmc_exp.optim.",
    "afqmc_exp.training.recipe.": "afqmc_exp.trainer.",  # TrainerConfig: in trainer.py until 6 December 2026
    "afqmc_exp.training.regularizers.": "afqmc_exp.regularizers.",
    "afqmc_exp.tracking.mlflow_tracking.": "afqmc_exp.tracking.",
}


def test_a_run_saved_before_the_modules_moved_resumes_and_reruns(tmp_path):
    out = killed_after_its_first_checkpoint(tmp_path)
    saved = out / ".hydra" / "config.yaml"
    text = saved.read_text()
    for new, old in OLD_TARGETS.items():
        assert f"_target_: {new}" in text, new
        text = text.replace(f"_target_: {new}", f"_target_: {old}")
    saved.write_text(text)
    resume = [sys.executable, str(REPO / "train.py"), f"resume={out}", f"hydra.run.dir={tmp_path / 'logs'}"]
    resumed = run_command(resume, cwd=tmp_path, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "a config saved before afqmc_exp's modules moved: afqmc_exp.optim.adamw -> afqmc_exp.training.optim.adamw" \
        in (tmp_path / "logs" / "train.log").read_text()  # said in the resuming command's own log  # fmt: skip
    client, runs = mlflow_runs(tmp_path, "afqmc")
    (run,) = runs
    assert run.info.status == "FINISHED"
    logged = client.download_artifacts(run.info.run_id, "hydra/config.yaml", str(tmp_path))
    assert "_target_: afqmc_exp.optim.adamw" in open(logged).read()  # the run's config as it was saved
    again = run_command([sys.executable, str(REPO / "train.py"), f"rerun={run.info.run_id}",
                         f"hydra.run.dir={tmp_path / 'rerun'}"], cwd=tmp_path, env=ENV, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = [r for r in mlflow_runs(tmp_path, "afqmc")[1] if r.data.tags.get("rerun_of") == run.info.run_id]
    assert len(rerun) == 1 and rerun[0].info.status == "FINISHED"
