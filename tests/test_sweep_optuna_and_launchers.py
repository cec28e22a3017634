"""Optuna searches (resumable, failures recorded), parallel jobs with joblib, launcher configs."""

import sys

import pytest

from afqmc_exp.sweep_folder import SweepFolder
from helpers import REPO, SHORT_RUN, mlflow_runs, run_command


def test_search_and_launcher_presets_compose():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        search = hydra_compose("train", overrides=["hparams_search=afqmc_optuna"], return_hydra_config=True)
        slurm = hydra_compose(
            "train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
        joblib = hydra_compose("train", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    sweeper = search.hydra.sweeper
    assert sweeper._target_.endswith("AfqmcOptunaSweeper") and sweeper.storage == "sqlite:///optuna.db"
    assert set(sweeper.params) == {"optim.lr", "scheduler.warmup_ratio", "optim.weight_decay", "data.batch_size"}
    assert search.hydra.mode.name == "MULTIRUN"
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (slurm.hydra.launcher.partition, slurm.hydra.launcher.gpus_per_node) == ("gpu", 1)
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")


def train_cmd(tmp_path, afqmc_dir, *overrides):
    return [
        sys.executable,
        str(REPO / "train.py"),
        *SHORT_RUN,
        "data.dev_limit=100",
        "trainer.max_steps=2",
        *overrides,
    ]


def search_preset(tmp_path, name: str, yaml: str) -> list[str]:
    """A search preset of the test's own (``hparams_search=<name>``): the overrides that pick it."""
    extra = tmp_path / "extra" / "hparams_search"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / f"{name}.yaml").write_text("# @package _global_\n" + yaml)
    return [f"hydra.searchpath=[file://{tmp_path / 'extra'}]", f"hparams_search={name}"]


def study(tmp_path, name):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


@pytest.mark.slow
def test_optuna_search_then_resumed_in_the_same_study(tmp_path, afqmc_dir):
    """The preset as shipped (only the trials and steps made small): its study is named <data>_<model>."""

    def search(n_trials, sweep):
        cmd = train_cmd(
            tmp_path,
            afqmc_dir,
            "hparams_search=afqmc_optuna",
            f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweep.dir={tmp_path / sweep}",
        )
        proc = run_command(cmd, cwd=tmp_path, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]

    search(3, "first")
    first = [(t.number, t.params, t.value) for t in study(tmp_path, "afqmc_minilm").trials]
    assert len(first) == 3 and all(t[2] is not None for t in first)
    search(5, "resumed")  # the study now wants 5: only 2 more run
    trials = study(tmp_path, "afqmc_minilm").trials
    assert [(t.number, t.params, t.value) for t in trials[:3]] == first
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.params["optim.lr"] for t in trials}) == 5
    _, runs = mlflow_runs(tmp_path, "afqmc")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (parent,) = parents  # the study's one parent, reopened by the resumed search, closed when the study is complete
    assert len(runs) == 6 and parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "5"
    assert parent.info.run_name.startswith("study afqmc_minilm · optuna: ")
    lrs = sorted(float(r.data.params["optim.lr"]) for r in runs if r not in parents)
    assert lrs == sorted(t.params["optim.lr"] for t in trials)
    # the parent says how the search was run, and each trial's name shows what it tried
    client, _ = mlflow_runs(tmp_path, "afqmc")
    for parent in parents:
        assert "hydra.sweeper.n_trials=" in parent.data.tags["sweep.overrides"]
        assert "multirun.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    names = [r.info.run_name for r in runs if r not in parents]
    assert len(set(names)) == len(names) and all("-warmup_ratio" in n and "-weight_decay" in n for n in names)


def test_a_tie_is_said_as_one(caplog):
    """Optuna's best_trial is the first of a tie; the sweep's best job breaks ties by dev loss: the log says so."""
    import optuna
    from omegaconf import OmegaConf

    from hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper import AfqmcOptunaSweeper

    study = optuna.create_study(direction="maximize")
    for value in (0.8, 0.9, 0.9):
        study.tell(study.ask(), value)
    sweeper = AfqmcOptunaSweeper(1, 1, "sqlite://", "s", None, 0, {})
    sweeper.config = OmegaConf.create({"trainer": {"metric": "accuracy"}})
    caplog.set_level("INFO")
    sweeper._log_best(study)
    assert (
        "best accuracy = 0.9000: trials 1, 2 tie (the best job named below breaks the tie by dev loss)" in caplog.text
    )


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path, afqmc_dir):
    preset = search_preset(tmp_path, "failing", "defaults:\n  - override /hydra/sweeper: afqmc_optuna\nhydra:\n"
                           "  mode: MULTIRUN\n  sweeper:\n    n_trials: 2\n    study_name: f\n    params:\n"
                           "      data.max_length: {type: categorical, choices: [1000]}\n")  # fmt: skip
    cmd = train_cmd(tmp_path, afqmc_dir, *preset, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    proc = run_command(cmd, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.state.name for t in study(tmp_path, "f").trials] == ["FAIL", "FAIL"]


@pytest.mark.slow
def test_two_workers_started_at_once_share_one_search_and_one_parent_on_sqlite(tmp_path, afqmc_dir):
    """The same search in two terminals on one machine (docs/scaling.md's recipe: SQLite on a local disk for both
    stores): the study's total between them, each trial once, one parent run with every trial under it."""
    import subprocess

    from helpers import launch

    cmd = train_cmd(tmp_path, afqmc_dir, "hparams_search=afqmc_optuna", "hydra.sweeper.n_trials=3")
    workers = [launch([*cmd, f"hydra.sweep.dir={tmp_path / f'worker{i}'}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE) for i in (1, 2)]  # fmt: skip
    said = [worker.communicate(timeout=900)[1] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "".join(said)[-3000:]
    trials = [t for t in study(tmp_path, "afqmc_minilm").trials if not t.user_attrs.get("afqmc.over_total")]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3, "".join(said)[-3000:]
    _, runs = mlflow_runs(tmp_path, "afqmc")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "3" and len(children) == 3
    assert sorted(float(r.data.params["optim.lr"]) for r in children) == sorted(t.params["optim.lr"] for t in trials)


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_into_one_store(tmp_path, afqmc_dir):
    cmd = train_cmd(
        tmp_path,
        afqmc_dir,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    cmd.insert(2, "--multirun")
    proc = run_command(cmd, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stderr + proc.stdout
    _, runs = mlflow_runs(tmp_path, "afqmc")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params["seed"] for r in children) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and "dev/f1" in r.data.metrics for r in runs if r in children)
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1


@pytest.mark.slow
def test_trials_the_pruner_stops_are_pruned_in_optuna_and_killed_with_a_tag_in_mlflow(tmp_path, afqmc_dir):
    """A threshold pruner that no F1 can pass prunes every trial at its first evaluation: deterministic."""
    preset = search_preset(tmp_path, "prune_all", "defaults:\n  - afqmc_optuna\nhydra:\n  sweeper:\n    n_trials: 2\n"
                           "    study_name: p\n    pruner:\n      type: threshold\n      lower: 1.1\n")  # fmt: skip
    cmd = train_cmd(tmp_path, afqmc_dir, *preset, "trainer.eval_every=1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    proc = run_command(cmd, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study(tmp_path, "p").trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [1] for t in trials)  # reported at step 1, pruned there
    _, runs = mlflow_runs(tmp_path, "afqmc")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    assert all(r.info.status == "KILLED" and r.data.tags["optuna.state"] == "PRUNED" for r in children)


def test_a_worker_that_meets_another_creating_the_storages_tables_tries_again(tmp_path, monkeypatch):
    """Two workers on a new PostgreSQL database both create Optuna's tables; the database refuses the later one
    (``CREATE TYPE studydirection``: duplicate key), as the first attempt here is refused. It tries again."""
    import optuna
    from omegaconf import OmegaConf
    from sqlalchemy.exc import IntegrityError

    from hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper import AfqmcOptunaSweeper

    calls = []

    class Raced(optuna.storages.RDBStorage):
        def __init__(self, url, **kwargs):
            calls.append(url)
            if len(calls) == 1:
                raise IntegrityError("CREATE TYPE studydirection", {}, Exception("duplicate key value"))
            super().__init__(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Raced)
    sweeper = AfqmcOptunaSweeper(3, 1, f"sqlite:///{tmp_path / 'optuna.db'}", "s", "maximize", 0, {})
    sweeper.config = OmegaConf.create({"trainer": {"metric": "accuracy"}})
    assert sweeper._load_study().study_name == "s" and len(calls) == 2


def test_a_second_search_fails_only_trials_whose_search_stopped_beating(tmp_path):
    """Two searches on one optuna.db: a RUNNING trial whose heartbeat is fresh (its search is alive) is left
    alone and counted as taken; one whose heartbeat stopped (a killed search) is failed."""
    import sqlite3

    import optuna
    from omegaconf import OmegaConf

    from hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper import GRACE_S, AfqmcOptunaSweeper, beating

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweeper = AfqmcOptunaSweeper(3, 1, storage, "s", "maximize", 0, {})
    sweeper.config = OmegaConf.create({"trainer": {"metric": "accuracy"}})
    study = sweeper._load_study()
    alive, dead = study.ask(), study.ask()
    with beating(study, [alive, dead]):
        pass
    with sqlite3.connect(tmp_path / "optuna.db") as db:  # the dead search's last beat: long ago
        db.execute(f"UPDATE trial_heartbeats SET heartbeat = datetime('now', '-{3 * GRACE_S} seconds') "
                   f"WHERE trial_id = {dead._trial_id}")  # fmt: skip
    with beating(study, [alive]):  # the first search goes on beating while the second loads the study
        again = AfqmcOptunaSweeper(3, 1, storage, "s", "maximize", 0, {})
        again.config = sweeper.config
        states = {t.number: t.state.name for t in again._load_study().trials}
    assert states == {alive.number: "RUNNING", dead.number: "FAIL"}
    study.tell(alive, 0.7)  # the first search's result is not lost
    assert optuna.load_study(study_name="s", storage=storage).trials[alive.number].value == 0.7


class ImmediateLauncher:
    """Hydra's launcher as the sweeper sees it, without training: every job returns ``value`` at once."""

    def __init__(self, value=0.5):
        self.value, self.launched = value, []

    def launch(self, batch, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        self.launched += batch
        self.numbers = [*getattr(self, "numbers", []), *range(initial_job_idx, initial_job_idx + len(batch))]
        results = []
        for _ in batch:
            result = JobReturn()
            result.status, result.return_value = JobStatus.COMPLETED, self.value
            results.append(result)
        return results


def worker(tmp_path, n_trials, n_jobs=1):
    """One search on the study ``s`` in tmp_path's optuna.db, as another terminal or SLURM array task starts it."""
    from omegaconf import OmegaConf

    from hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper import AfqmcOptunaSweeper

    params = {"optim.lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}}
    sweeper = AfqmcOptunaSweeper(n_trials, n_jobs, f"sqlite:///{tmp_path / 'optuna.db'}", "s", "maximize", 0, params)
    sweeper.config = OmegaConf.create({"trainer": {"metric": "accuracy"},
                                       "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})  # fmt: skip
    sweeper.launcher = ImmediateLauncher()
    return sweeper


def test_a_trial_asked_past_the_studys_total_by_a_racing_worker_is_not_run(tmp_path):
    """Two workers count 3 of 4 trials taken at the same moment and both ask: the one whose trial came second
    stands down, and its trial is told FAIL, marked as over the total, and not counted as one of the study's."""
    from optuna.trial import TrialState

    first, second = worker(tmp_path, 4), worker(tmp_path, 4)
    study = first._load_study()
    for _ in range(3):
        study.tell(study.ask(), 0.5)
    taken = first._taken(study)  # both read 3 ...
    assert taken == 3 == second._taken(study)
    (mine,) = second._ask(study, 1)  # ... the second asks first
    first._taken = lambda study: taken  # the first asks on what it read before
    assert first._ask(study, 1) == []
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING, TrialState.FAIL]
    assert trials[3].number == mine.number and trials[4].user_attrs == {"afqmc.over_total": True}
    assert second._taken(study) == 4


def test_two_workers_on_one_new_study_run_its_total_and_no_more_quietly(tmp_path, recwarn):
    """Started at the same moment on a storage not yet made: neither crashes making it, and Optuna's warnings about
    heartbeats (which the sweeper uses on purpose) are not shown."""
    import threading

    workers, errors = [worker(tmp_path, 5, n_jobs=2), worker(tmp_path, 5, n_jobs=2)], []

    def search(sweeper):
        try:
            sweeper.sweep([])
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=search, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sum(len(w.launcher.launched) for w in workers) == 5
    assert not [str(w.message) for w in recwarn if "optuna" in w.filename or "sweeper" in w.filename]
    study = workers[0]._load_study()
    counted = [t for t in study.trials if not t.user_attrs.get("afqmc.over_total")]
    assert len(counted) == 5 and all(t.state.name == "COMPLETE" for t in counted)


def test_a_worker_says_whether_it_leaves_the_study_complete(tmp_path):
    """What the sweep's MLflow callback reads to close the study's shared parent run, or leave it to the last worker."""
    import json

    from hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper import beating

    def said(sweeper):
        sweeper.sweep([])
        return json.loads(SweepFolder(tmp_path / "sweep").study_file.read_text())

    other = worker(tmp_path, 3)
    study = other._load_study()
    elsewhere = study.ask()  # another worker's trial, still running
    with beating(study, [elsewhere]):
        assert said(worker(tmp_path, 3)) == {"study": "s", "complete": False}
    study.tell(elsewhere, 0.5)
    assert said(worker(tmp_path, 3)) == {"study": "s", "complete": True}


class GatedLauncher(ImmediateLauncher):
    """Trial 0 runs until a third trial has started; every other trial ends at once. Launched in batches of two,
    trial 0 would wait for a trial that only starts after it ends."""

    def __init__(self):
        import threading

        super().__init__()
        self.third_started, self.waited = threading.Event(), None

    def launch(self, batch, initial_job_idx):
        if initial_job_idx == 2:
            self.third_started.set()
        if initial_job_idx == 0:
            self.waited = self.third_started.wait(timeout=30)
        return super().launch(batch, initial_job_idx)


def test_a_free_slot_gets_the_next_trial_while_a_long_one_still_runs(tmp_path):
    sweeper = worker(tmp_path, 4, n_jobs=2)
    sweeper.launcher = GatedLauncher()
    sweeper.sweep([])
    assert sweeper.launcher.waited is True  # trial 2 started in trial 1's slot while trial 0 was running
    study = sweeper._load_study()
    assert len(sweeper.launcher.launched) == 4 and [t.state.name for t in study.trials] == ["COMPLETE"] * 4


def test_the_basic_launcher_and_async_trials_off_get_batches(tmp_path):
    class BasicLauncher(ImmediateLauncher):  # Hydra's: one job at a time, in this process
        def launch(self, batch, initial_job_idx):
            self.sizes = [*getattr(self, "sizes", []), len(batch)]
            return super().launch(batch, initial_job_idx)

    for launcher, async_trials in ((BasicLauncher(), True), (BasicLauncher(), False)):
        sweeper = worker(tmp_path / str(async_trials), 5, n_jobs=2)
        sweeper.launcher, sweeper.async_trials = launcher, async_trials
        sweeper.sweep([])
        assert launcher.sizes == [2, 2, 1]


@pytest.mark.parametrize("async_trials", [True, False])
def test_a_job_is_numbered_as_its_trial_so_a_continued_search_never_meets_another_trial_s_folder(
    tmp_path, async_trials
):
    """Trial 0 is another worker's, still running: this worker's jobs (and folders) are 1, 2 and 3."""
    import types

    from hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper import beating, numbered_runs

    sweeper = worker(tmp_path, 4, n_jobs=2)
    sweeper.async_trials = async_trials
    study = sweeper._load_study()
    elsewhere = study.ask()
    with beating(study, [elsewhere]):
        sweeper.sweep([])
    assert sorted(sweeper.launcher.numbers) == [1, 2, 3]
    trials = [types.SimpleNamespace(number=n) for n in (3, 4, 6, 7, 9)]  # another worker took 5 and 8 meanwhile
    assert [[t.number for t in run] for run in numbered_runs(trials)] == [[3, 4], [6, 7], [9]]
