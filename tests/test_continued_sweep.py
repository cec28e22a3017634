"""A sweep that stopped, continued where it stopped (``commands/continued_sweep.py``), and a preempted job requeued
into its own run (``training/signals.py``). The command line's rewriting, the guard and the job's decision are
checked in-process; a grid killed with SIGKILL and a job preempted under ``submitit_local`` end to end (slow)."""

import json
import re
import signal
import sys
import time

import pytest
from omegaconf import OmegaConf

from afqmc_exp.commands.continued_sweep import SweepFolderGuard, continued_sweep_command
from afqmc_exp.commands.earlier_run import job_met_again
from afqmc_exp.run_folder import RunFolder
from afqmc_exp.sweep_folder import SweepFolder
from helpers import REPO, SHORT_RUN, launch, mlflow_runs, run_command

CONF = REPO / "conf"
SWEPT = ["optim.lr=1e-5,2e-5", "seed=1,2"]


def saved_sweep(folder, task=SWEPT, hydra=("hydra.mode=MULTIRUN", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")):
    """A sweep folder as a sweeper leaves it: its ``multirun.yaml`` with the overrides it was started with."""
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {"hydra": [*hydra, f"hydra.sweep.dir={folder}"], "task": list(task)}
    OmegaConf.save({"hydra": {"sweep": {"dir": str(folder)}, "overrides": overrides}}, folder / "multirun.yaml")
    return folder


def test_a_command_line_without_a_sweep_to_resume_is_left_as_it_is(tmp_path):
    for argv in (["optim.lr=1e-5"], ["resume=outputs/x"], ["--multirun", "optim.lr=1e-5,2e-5"]):
        assert continued_sweep_command(argv, CONF) == argv


def test_resume_of_a_sweep_folder_is_the_sweep_s_own_command_in_that_folder(tmp_path):
    sweep = saved_sweep(tmp_path / "sweep")
    argv = continued_sweep_command(["--multirun", f"resume={sweep}"], CONF)
    assert argv == ["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SWEPT,
                    f"hydra.sweep.dir={sweep}"]  # fmt: skip


def test_where_the_jobs_record_and_run_may_change_and_nothing_else(tmp_path):
    sweep = saved_sweep(tmp_path / "sweep")
    argv = continued_sweep_command(
        ["-m", f"resume={sweep}", "hydra/launcher=basic", "tracking.uri=sqlite:///b.db"], CONF
    )
    assert argv == [
        "--multirun",
        *SWEPT,
        f"hydra.sweep.dir={sweep}",
        "hydra/launcher=basic",
        "tracking.uri=sqlite:///b.db",
    ]
    with pytest.raises(SystemExit, match=r"optim.lr=3e-5 would make it another sweep\. Beside resume= give only "):
        continued_sweep_command(["-m", f"resume={sweep}", "optim.lr=3e-5"], CONF)


def test_a_run_folder_or_a_folder_without_a_sweep_is_refused_naming_what_to_give(tmp_path):
    run = tmp_path / "sweep" / "0"
    RunFolder(run).hydra.mkdir(parents=True)
    RunFolder(run).config.write_text("trainer: {}\n")
    said = rf"is one run's folder, not a sweep's: continue that run without --multirun \(python train.py resume={run}\)"
    with pytest.raises(SystemExit, match=rf"{said}, or give its sweep's folder, {run.parent}$"):
        continued_sweep_command(["--multirun", f"resume={run}"], CONF)
    with pytest.raises(SystemExit, match="no multirun.yaml there, so no sweep to continue"):
        continued_sweep_command(["--multirun", f"resume={tmp_path}"], CONF)


def test_a_parent_run_id_finds_its_sweep_folder_in_the_store(tmp_path, store_uri):
    from afqmc_exp.tracking import store

    sweep = saved_sweep(tmp_path / "sweep")
    client = store.client(store_uri)
    parent = client.create_run(client.create_experiment("s"), tags={"sweep.dir": str(sweep)}).info.run_id
    argv = continued_sweep_command(["-m", f"resume={parent}", f"tracking.uri={store_uri}"], CONF)
    assert argv[-2:] == [f"hydra.sweep.dir={sweep}", f"tracking.uri={store_uri}"]
    with pytest.raises(SystemExit, match=r"resume=nosuchrun: neither a sweep's folder nor the id of an MLflow run"):
        continued_sweep_command(["-m", "resume=nosuchrun", f"tracking.uri={store_uri}"], CONF)
    SweepFolder(sweep).save_parent("another", "s", [])  # the folder deleted, and another sweep started at that path
    with pytest.raises(SystemExit) as other:
        continued_sweep_command(["-m", f"resume={parent}", f"tracking.uri={store_uri}"], CONF)
    said = f"its folder {sweep} holds another sweep now (parent run another); continue that one with resume={sweep}"
    assert str(other.value) == f"error: resume={parent}: {said}, if it is the one you mean"


def multirun_start(sweep_dir, task, hydra=("hydra.mode=MULTIRUN",)):
    """What Hydra's callback is given as a sweep starts in ``sweep_dir`` (before its sweeper writes anything)."""
    overrides = {"hydra": [*hydra, f"hydra.sweep.dir={sweep_dir}"], "task": list(task)}
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": overrides}})
    SweepFolderGuard().on_multirun_start(config)


def test_a_sweep_folder_holding_another_sweep_is_refused_and_the_same_sweep_goes_on(tmp_path, caplog):
    caplog.set_level("INFO")
    sweep = saved_sweep(tmp_path / "sweep")
    before = sorted((p, p.stat().st_mtime_ns) for p in sweep.rglob("*"))
    with pytest.raises(SystemExit, match=r"holds another sweep \(optim.lr=1e-5,2e-5 there, optim.lr=1e-5,3e-5 here\); "
                                         r"nothing was written there: .* --multirun resume="):  # fmt: skip
        multirun_start(sweep, ["optim.lr=1e-5,3e-5", "seed=1,2"])
    with pytest.raises(SystemExit, match="its overrides in another order, which numbers its jobs otherwise"):
        multirun_start(sweep, list(reversed(SWEPT)))
    assert sorted((p, p.stat().st_mtime_ns) for p in sweep.rglob("*")) == before
    multirun_start(sweep, [*SWEPT, "tracking.uri=sqlite:///elsewhere.db"])  # where it records may change
    assert "holds this same sweep: jobs that finished are reported, not trained again" in caplog.text
    multirun_start(tmp_path / "new", ["optim.lr=1"])  # a new sweep folder: nothing to say


@pytest.mark.parametrize("cut", ["hydra:\n  overrides:\n    task: [optim.lr=1e-5", "hydra:\n", ""])
def test_a_sweep_folder_whose_multirun_yaml_a_kill_cut_is_one_line_with_the_way_on(tmp_path, cut):
    """Hydra rewrites multirun.yaml in place at each start of a sweep; a kill then leaves it cut (or empty). Neither
    continuing the sweep nor starting a sweep in its folder goes on unchecked, nor ends in a traceback (which Hydra
    would swallow from its callback, and the other sweep would have run in that folder)."""
    sweep = saved_sweep(tmp_path / "sweep")
    (sweep / "multirun.yaml").write_text(cut)
    said = (rf"^error: {sweep / 'multirun.yaml'} cannot be read \(.+\); a kill while Hydra rewrote it\? Move it aside, "
            rf"then run the sweep's own command again with hydra.sweep.dir={sweep}: its finished jobs are reported, "
            "killed ones continue$")  # fmt: skip
    with pytest.raises(SystemExit, match=said):
        continued_sweep_command(["--multirun", f"resume={sweep}"], CONF)
    with pytest.raises(SystemExit, match=said):
        multirun_start(sweep, SWEPT)
    assert (sweep / "multirun.yaml").read_text() == cut


def test_a_multirun_yaml_cut_inside_its_task_list_does_not_shrink_the_sweep(tmp_path):
    """A kill while Hydra rewrites multirun.yaml can cut it inside the task list: still YAML, with fewer overrides.
    The overrides the guard kept whole as the sweep started are the sweep's: continued, it is the same grid; a sweep
    of the cut overrides is another sweep. Each start keeps what it may change (the store, the launcher)."""
    sweep = tmp_path / "sweep"
    multirun_start(sweep, SWEPT, hydra=["hydra.mode=MULTIRUN", "hydra/launcher=joblib"])
    assert (sweep / "sweep_overrides.json").stat().st_mode & 0o777 == 0o600  # as multirun.yaml: it keeps secrets
    saved_sweep(sweep, task=SWEPT[:1])  # the cut: "task: [optim.lr=1e-5,2e-5" then nothing, as YAML ends it
    argv = continued_sweep_command(["--multirun", f"resume={sweep}"], CONF)
    assert argv == ["--multirun", "hydra/launcher=joblib", *SWEPT, f"hydra.sweep.dir={sweep}"]
    with pytest.raises(SystemExit, match=r"holds another sweep \(seed=1,2 there, \(no override\) here\)"):
        multirun_start(sweep, SWEPT[:1])
    multirun_start(sweep, [*SWEPT, "tracking.uri=sqlite:///b.db"], hydra=["hydra.mode=MULTIRUN"])
    argv = continued_sweep_command(["--multirun", f"resume={sweep}"], CONF)
    assert argv == ["--multirun", *SWEPT, "tracking.uri=sqlite:///b.db", f"hydra.sweep.dir={sweep}"]


def test_a_job_meets_its_folder_again_only_when_a_run_opened_there(tmp_path, caplog):
    caplog.set_level("INFO")
    folder = RunFolder(tmp_path / "3")
    folder.hydra.mkdir(parents=True)  # what Hydra writes before the job starts
    assert not job_met_again(folder, "d1")
    folder.save_run_id("abc")
    assert job_met_again(folder, "d1")  # a folder from before digests were kept
    folder.save_config_digest("d1")
    assert job_met_again(folder, "d1")
    assert "stopped before it finished: continuing it from its last checkpoint" in caplog.text
    folder.result.write_text(
        json.dumps({"metric": "accuracy", "best_metric": 0.75, "best_step": 4, "mlflow_run_id": "abc"})
    )
    assert job_met_again(folder, "d1")
    assert "finished (best dev accuracy 0.7500 at step 4, MLflow run abc): reported, not trained again" in caplog.text


def test_a_job_that_meets_the_run_of_another_config_in_its_folder_is_refused_and_writes_nothing(tmp_path):
    """Another search's trial in a reused hydra.sweep.dir: Hydra has rewritten .hydra/ with this job's config, but the
    digest the run started with says it is not this job's; the job fails in one line and the run stays as it is."""
    from afqmc_exp.commands.config_checks import ConfigError

    folder = RunFolder(tmp_path / "0")
    folder.hydra.mkdir(parents=True)
    folder.save_run_id("abc")
    folder.save_config_digest("theirs")
    before = sorted((p, p.read_bytes()) for p in folder.root.rglob("*") if p.is_file())
    with pytest.raises(ConfigError, match=r"holds the run of another config .*: it is left as it is; give this sweep a "
                                          r"new hydra.sweep.dir$"):  # fmt: skip
        job_met_again(folder, "mine")
    assert sorted((p, p.read_bytes()) for p in folder.root.rglob("*") if p.is_file()) == before


def grid(tmp_path, *extra):
    """A 4-job grid of 2-step runs into tmp_path/sweep (one job at a time, in this order)."""
    return [sys.executable, str(REPO / "train.py"), "--multirun", *SHORT_RUN, "trainer.max_steps=2",
            "trainer.eval_every=null", "data.dev_limit=40", "optim.lr=1e-5,2e-5", "seed=1,2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra]  # fmt: skip


@pytest.mark.slow
def test_a_grid_killed_after_two_jobs_continues_without_training_them_again(tmp_path, afqmc_dir):
    sweep = tmp_path / "sweep"
    proc = launch(grid(tmp_path), cwd=tmp_path)
    deadline = time.monotonic() + 600
    while not (sweep / "2").exists():  # the third job has begun: the first two are done, their runs closed
        assert proc.poll() is None, "the sweep ended before its second job finished"
        assert time.monotonic() < deadline, "the second job never finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = {n: (sweep / n / "result.json").read_bytes() for n in ("0", "1")}
    client, runs = mlflow_runs(tmp_path, "afqmc")
    first_two = {str(sweep / "0"), str(sweep / "1")}
    ended = {r.info.run_id: r.info.end_time for r in runs if r.data.tags.get("hydra.output_dir") in first_two}
    assert len(ended) == 2 and all(ended.values())  # closed before the kill

    proc = run_command([sys.executable, str(REPO / "train.py"), "--multirun", f"resume={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {n: (sweep / n / "result.json").read_bytes() for n in ("0", "1")} == done  # not trained again
    client, runs = mlflow_runs(tmp_path, "afqmc")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "4"
    assert len(jobs) == 4 and {r.info.status for r in jobs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert {r.data.tags["hydra.output_dir"] for r in jobs} == {str(sweep / n) for n in "0123"}
    assert {r.info.run_id: r.info.end_time for r in jobs if r.data.tags["hydra.output_dir"] in first_two} == ended


def job_process(sweep_dir):
    """The process of submitit's job (``python -m submitit.core._submit <sweep>/.submitit/...``)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "submitit.core._submit" in cmdline and any(str(sweep_dir) in part for part in cmdline):
            return proc
    return None


@pytest.mark.slow
def test_a_preempted_job_saves_a_checkpoint_and_is_requeued_into_its_run_and_trial(tmp_path, afqmc_dir):
    """submitit warns a job with SIGUSR2 before its time limit or preemption; submitit_local requeues it as SLURM
    would. The job stops at a step with a checkpoint, and its requeued self continues its MLflow run and trial."""
    import optuna

    sweep, steps = tmp_path / "sweep", 12  # the search may pick batches of 64: seconds a step, after the signal too
    search = [f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", "hydra.sweeper.n_trials=1"]
    cmd = [sys.executable, str(REPO / "train.py"), *SHORT_RUN, f"trainer.max_steps={steps}", "trainer.eval_every=null",
           "trainer.checkpoint_every=4", "data.dev_limit=40", "hparams_search=afqmc_optuna", *search,
           "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = launch(cmd, cwd=tmp_path)
    deadline = time.monotonic() + 600
    while not (sweep / "0" / "last_checkpoint" / "trainer_state.pt").exists() or not job_process(sweep):
        assert proc.poll() is None, "the search ended before its job's first checkpoint"
        assert time.monotonic() < deadline, "the job never saved a checkpoint"
        time.sleep(0.05)
    job_process(sweep).send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]

    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]
    stopped = re.search(r"stopped by a signal at step (\d+): handing the job back to its scheduler", logs)
    assert stopped and f"resuming at step {stopped[1]} (" in logs and int(stopped[1]) < steps, logs[-3000:]
    (trial,) = optuna.load_study(study_name="afqmc_minilm", storage=search[0].split("=", 1)[1]).trials
    assert trial.state.name == "COMPLETE"
    client, runs = mlflow_runs(tmp_path, "afqmc")
    (job,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert job.info.status == "FINISHED" and job.data.tags["hydra.output_dir"] == str(sweep / "0")
    losses = [m.step for m in client.get_metric_history(job.info.run_id, "train/loss")]
    assert losses == sorted(set(losses)) and losses[-1] == steps  # one run, each step logged once, to the end
    assert json.loads((sweep / "0" / "result.json").read_text())["mlflow_run_id"] == job.info.run_id
