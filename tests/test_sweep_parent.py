"""The sweep's parent run (``tracking/sweep.py``), driven directly against a SQLite store in tmp_path: opened when the
multirun starts, its id in the sweep folder, its children (runs started with ``parent_run_id``) summarised on it
when the sweep ends, closed FAILED when a job failed or the sweep crashed. No training runs."""

import json
import pickle
import shutil
import types

import pytest
from omegaconf import OmegaConf

from afqmc_exp.sweep_folder import SweepFolder
from afqmc_exp.tracking import sweep
from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
from afqmc_exp.tracking.sweep import MlflowSweepCallback, best_child, swept_keys, what_is_swept


def sweep_config(tmp_path, task=("optim.lr=1e-5,3e-5", "seed=1"), sweeper="basic", searched=None, enabled=True):
    """What Hydra hands the callback when a multirun starts (only what the parent reads)."""
    return OmegaConf.create({
        "tracking": {"_target_": "afqmc_exp.tracking.mlflow_tracking.MlflowTracking", "enabled": enabled,
                     "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "sweeps"},
        "trainer": {"metric": "accuracy"},
        "db_password": "hunter2xyz",
        "data": {"_target_": "no.such.Data"},  # its files cannot be checked: the parent names no dataset
        "hydra": {"sweep": {"dir": str(tmp_path / "sweep")},
                  "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": list(task)},
                  "runtime": {"choices": {"hydra/sweeper": sweeper}}, "sweeper": {"params": searched}},
    })  # fmt: skip


@pytest.fixture(autouse=True)
def sweep_store(store_uri):
    """Every sweep here logs to tmp_path/mlflow.db, made already (see conftest)."""
    return store_uri


@pytest.fixture
def at_exit(monkeypatch):
    """The hooks the sweep registers with ``atexit`` (kept here, not run when pytest exits)."""
    hooks = []
    register = lambda f, *args, **kwargs: hooks.append((f, args, kwargs))  # noqa: E731
    monkeypatch.setattr(sweep, "atexit", types.SimpleNamespace(register=register))  # the sweep's only
    return hooks


def exit_hook(at_exit, callback):
    """The callback's own exit hook, called as ``atexit`` would."""
    ((hook, args, kwargs),) = at_exit
    assert hook.__self__ is callback
    return lambda: hook(*args, **kwargs)


def started(tmp_path, at_exit, **options):
    callback = MlflowSweepCallback()
    callback.on_multirun_start(sweep_config(tmp_path, **options))
    return callback, callback.run.client


def job(tmp_path, parent_id, name, objective=None, status="FINISHED", dev_loss=0.5, params=None, tags=None):
    """A job's run nested under the parent, as training.run leaves it."""
    tracking = MlflowTracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="sweeps", run_name=name)
    folder = tmp_path / "sweep" / name
    run = tracking.start(params or {}, {"hydra.output_dir": str(folder), **(tags or {})}, folder, parent_id)
    if objective is not None:
        run.log_metrics({"best/dev_accuracy": objective, "final/dev_loss": dev_loss}, step=0)
    run.end(status)
    return run.run_id


def test_a_sweep_opens_one_parent_named_for_what_it_varies_with_its_id_in_the_sweep_folder(tmp_path, at_exit):
    callback, client = started(tmp_path, at_exit, task=("optim.lr=1e-5,3e-5", "seed=1", "+db_password=hunter2xyz"))
    assert callback.run.outbox.drain(60)  # its params are delivered by the outbox's thread: read once they are
    sweep_dir = tmp_path / "sweep"
    parent = client.get_run(SweepFolder(sweep_dir).parent_run_id())
    assert parent.info.run_id == callback.run.run_id and "mlflow.parentRunId" not in parent.data.tags
    assert parent.info.run_name.startswith("sweep 20") and parent.info.run_name.endswith(" · optim.lr×2")
    assert SweepFolder(sweep_dir).swept_keys() == ["optim.lr"]  # the jobs' run names show it; seed=1 is not swept
    assert parent.data.tags["sweep.dir"] == str(sweep_dir.resolve()) and parent.data.tags["sweep.sweeper"] == "basic"
    assert parent.data.tags["sweep.overrides"] == "optim.lr=1e-5,3e-5 seed=1 +db_password=***"  # no hydra.mode
    assert parent.data.params["sweep.objective"] == "dev_accuracy"
    assert [(f.__self__, kwargs) for f, _, kwargs in at_exit] == [(callback, {"crashed": True})]
    callback.close()


def test_the_parent_summarises_its_jobs_links_the_best_crowns_its_model_and_closes_finished(tmp_path, at_exit):
    callback, client = started(tmp_path, at_exit)
    parent_id = callback.run.run_id
    client.create_registered_model("afqmc")
    version = client.create_model_version("afqmc", source=str(tmp_path), run_id=None).version
    job(tmp_path, parent_id, "lr1e-05", 0.70, params={"optim.lr": "1e-05"})
    best = job(tmp_path, parent_id, "lr3e-05", 0.80, params={"optim.lr": "3e-05"},
               tags={"registered_model_version": f"afqmc/{version}"})  # fmt: skip
    (tmp_path / "sweep" / "multirun.yaml").write_text("db_password: hunter2xyz\n")
    callback.close()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best/dev_accuracy"] == 0.80
    tags = parent.data.tags
    assert (tags["sweep.jobs"], tags["sweep.failed_jobs"], tags["sweep.best_run_id"]) == ("2", "0", best)
    note = tags["mlflow.note.content"]  # the run page's description: the best job linked, the weights' URI
    assert (
        tags["sweep.best_run_name"] == "lr3e-05" and f"(#/experiments/{parent.info.experiment_id}/runs/{best})" in note
    )
    assert f"runs:/{parent_id}/best_model" in note
    artifacts = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/report.md", "report/runs.csv", "report/by_config.csv"} <= artifacts
    shown = client.download_artifacts(parent_id, "multirun.yaml", str(tmp_path / "got"))
    assert open(shown).read() == "db_password: ***\n"  # masked for others; the sweep folder's own copy: owner's only
    assert oct((tmp_path / "sweep" / "multirun.yaml").stat().st_mode & 0o777) == "0o600"
    assert client.get_model_version_by_alias("afqmc", "champion").version == version


def test_a_failed_job_closes_the_parent_failed_and_a_second_close_does_nothing(tmp_path, at_exit):
    callback, client = started(tmp_path, at_exit)
    parent_id = callback.run.run_id
    job(tmp_path, parent_id, "a", 0.7)
    job(tmp_path, parent_id, "b", status="FAILED")
    callback.close()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.failed_jobs"] == "1"
    exit_hook(at_exit, callback)()  # the exit hook after a normal end: the parent stays as it was closed
    assert client.get_run(parent_id).info.end_time == parent.info.end_time


def test_a_sweep_that_crashed_is_closed_failed_by_its_exit_hook(tmp_path, at_exit):
    callback, client = started(tmp_path, at_exit)
    job(tmp_path, callback.run.run_id, "a", 0.7)  # every job that ran finished; then a job raised
    exit_hook(at_exit, callback)()
    assert client.get_run(SweepFolder(tmp_path / "sweep").parent_run_id()).info.status == "FAILED"


def test_a_sweep_without_jobs_is_closed_failed(tmp_path, at_exit):
    callback, client = started(tmp_path, at_exit)
    callback.close()
    parent = client.get_run(SweepFolder(tmp_path / "sweep").parent_run_id())
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.jobs"] == "0"


def test_the_callback_travels_to_job_processes_without_its_parent_run(tmp_path, at_exit):
    callback, _ = started(tmp_path, at_exit)
    copy = pickle.loads(pickle.dumps(callback))  # as joblib sends it; the run's outbox thread cannot travel
    assert copy.run is None and copy.metric == "accuracy"
    copy.close()  # a job's copy closes nothing
    assert callback.run is not None
    callback.close()


def test_tracking_off_opens_no_parent(tmp_path, at_exit):
    before = (tmp_path / "mlflow.db").read_bytes()
    callback = MlflowSweepCallback()
    callback.on_multirun_start(sweep_config(tmp_path, enabled=False))
    assert callback.run is None and SweepFolder(tmp_path / "sweep").parent_run_id() is None
    assert (tmp_path / "mlflow.db").read_bytes() == before and not (tmp_path / "sweep").exists()
    callback.close()


def test_a_k_fold_sweep_pools_each_pair_once_out_of_fold(tmp_path, at_exit):
    callback, client = started(tmp_path, at_exit, task=("data.folds=2", "data.fold=0,1"))
    parent_id = callback.run.run_id
    for fold, (objective, rows) in enumerate([(0.5, [(0, "1", 0.9), (1, "0", 0.2)]), (1.0, [(2, "1", 0.6)])]):
        folder = tmp_path / "sweep" / f"fold{fold}"
        folder.mkdir(parents=True)
        predictions = [{"id": i, "gold": gold, "probs": {"0": 1 - p, "1": p}} for i, gold, p in rows]
        (folder / "dev_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
        job(tmp_path, parent_id, f"fold{fold}", objective, params={"data.folds": "2", "data.fold": str(fold)})
    callback.close()
    metrics = client.get_run(parent_id).data.metrics
    assert metrics["oof/pairs"] == 3 and metrics["oof/accuracy"] == 1.0
    assert metrics["folds/best_dev_accuracy_mean"] == 0.75 and 0 < metrics["oof/threshold"] < 1
    assert "oof_predictions.jsonl" in {a.path for a in client.list_artifacts(parent_id)}


def fold_job(tmp_path, parent_id, name, fold, objective, rows, params=()):
    """A k-fold sweep's job: its dev predictions in its folder, as training.run leaves them."""
    folder = tmp_path / "sweep" / name
    folder.mkdir(parents=True)
    predictions = [{"id": i, "gold": gold, "probs": {"0": 1 - p, "1": p}} for i, gold, p in rows]
    (folder / "dev_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
    job(tmp_path, parent_id, name, objective, params={"data.folds": "2", "data.fold": str(fold), **dict(params)})


def test_folds_of_several_configs_are_not_pooled_into_one_out_of_fold(tmp_path, at_exit):
    """A k-fold sweep that varies more than the fold (two learning rates, two tasks): one config's pairs would be
    taken for another's, and two tasks' labels mixed. Nothing is pooled, said; the parent closes as ever."""
    callback, client = started(tmp_path, at_exit, task=("data.folds=2", "data.fold=0,1", "optim.lr=1e-5,3e-5"))
    parent_id = callback.run.run_id
    for lr, objective in (("1e-5", 0.5), ("3e-5", 1.0)):
        for fold in (0, 1):
            fold_job(tmp_path, parent_id, f"lr{lr}-fold{fold}", fold, objective, [(fold, "1", 0.9)], {"optim.lr": lr})
    callback.close()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and not [k for k in parent.data.metrics if k.startswith("oof/")]
    assert parent.data.tags["sweep.best_run_name"] == "lr3e-5-fold0"


def test_a_summary_that_cannot_be_made_still_closes_the_parent(tmp_path, at_exit, monkeypatch, empty_store_file):
    """What fails while the parent summarises its jobs (a job's predictions unreadable, the store gone at the very
    end) never leaves it RUNNING for good: the rest of the summary is made, and it is closed."""
    callback, client = started(tmp_path, at_exit, task=("data.folds=2", "data.fold=0,1"))
    parent_id = callback.run.run_id
    fold_job(tmp_path, parent_id, "fold0", 0, 0.5, [(0, "1", 0.9)])
    fold_job(tmp_path, parent_id, "fold1", 1, 1.0, [(1, "0", 0.2)])
    (tmp_path / "sweep" / "fold1" / "dev_predictions.jsonl").write_text('{"id": 1, "gold"')  # cut by a full disk
    callback.close()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.best_run_name"] == "fold1"

    (tmp_path / "gone").mkdir()
    shutil.copyfile(empty_store_file, tmp_path / "gone" / "mlflow.db")  # a store of its own, made already
    callback, client = started(tmp_path / "gone", at_exit, task=("optim.lr=1e-5,3e-5", "+db_password=hunter2xyz"))
    parent_id = callback.run.run_id
    (tmp_path / "gone" / "sweep" / "multirun.yaml").write_text("db_password: hunter2xyz\n")  # as Hydra saves it

    def store_gone(*args, **kwargs):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(callback.run.client, "search_runs", store_gone)
    callback.close()
    assert client.get_run(parent_id).info.status == "FAILED"
    assert (tmp_path / "gone" / "sweep" / "multirun.yaml").stat().st_mode & 0o077 == 0  # its secrets kept private


def test_folds_that_differ_only_in_where_they_record_are_one_config(tmp_path, at_exit):
    """A k-fold sweep continued with another tracking.uri (which a continuation may change): still one config."""
    callback, client = started(tmp_path, at_exit, task=("data.folds=2", "data.fold=0,1"))
    parent_id = callback.run.run_id
    fold_job(tmp_path, parent_id, "fold0", 0, 0.5, [(0, "1", 0.9)], {"tracking.uri": "sqlite:///mlflow.db"})
    fold_job(tmp_path, parent_id, "fold1", 1, 1.0, [(1, "0", 0.2)], {"tracking.uri": "sqlite:///./mlflow.db"})
    callback.close()
    assert client.get_run(parent_id).data.metrics["oof/pairs"] == 2


def test_the_best_job_is_the_best_objective_then_the_lower_dev_loss_then_the_earlier_start(tmp_path):
    first = job(tmp_path, None, "first", 0.8, dev_loss=0.4)
    job(tmp_path, None, "worse", 0.7, dev_loss=0.1)
    lower_loss = job(tmp_path, None, "lower_loss", 0.8, dev_loss=0.3)
    job(tmp_path, None, "same_later", 0.8, dev_loss=0.3)
    job(tmp_path, None, "no_objective")
    job(tmp_path, None, "nan", float("nan"))
    client = MlflowTracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}").client()
    runs = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    assert best_child(runs, "accuracy").info.run_id == lower_loss
    assert best_child([r for r in runs if r.info.run_id != lower_loss and r.info.run_name != "same_later"],
                      "accuracy").info.run_id == first  # fmt: skip
    assert best_child([r for r in runs if r.info.run_name in ("no_objective", "nan")], "accuracy") is None


@pytest.mark.parametrize(
    "task,sweeper,searched,keys,name",
    [
        (["optim.lr=1e-5,3e-5", "seed=1,2,3", "+extra=4,5"], "basic", None, {"optim.lr": 2, "seed": 3, "extra": 2},
         "optim.lr×2 seed×3 extra×2"),
        (["data.labels=[0,1]", "note='a,b'", "seed=1"], "basic", None, {}, "one job"),  # a list, a quoted string
        (["seed=1"], "afqmc_optuna", {"optim.lr": "interval(1e-5, 1e-4)", "seed": "choice(1, 2)"}, None,
         "optuna: optim.lr, seed"),
    ],
    ids=["grid", "no sweep", "search"],
)  # fmt: skip
def test_what_a_sweep_varies(tmp_path, task, sweeper, searched, keys, name):
    config = sweep_config(tmp_path, task=task, sweeper=sweeper, searched=searched)
    assert swept_keys(config) == (keys if keys is not None else dict.fromkeys(searched))
    assert what_is_swept(config) == name


def test_a_failed_or_pruned_job_is_never_the_best_even_with_the_best_objective(tmp_path, at_exit):
    """Jobs that diverged logged their evaluations before they failed: only a FINISHED job can be the best."""
    callback, client = started(tmp_path, at_exit)
    parent_id = callback.run.run_id
    job(tmp_path, parent_id, "diverged", objective=0.95, status="FAILED")
    job(tmp_path, parent_id, "pruned", objective=0.93, status="KILLED", tags={"optuna.state": "PRUNED"})
    finished = job(tmp_path, parent_id, "finished", objective=0.7)
    callback.close()
    parent = client.get_run(parent_id)
    assert parent.data.tags["sweep.best_run_id"] == finished and parent.data.metrics["best/dev_accuracy"] == 0.7


def test_a_sweep_whose_every_job_failed_names_no_best(tmp_path, at_exit):
    callback, client = started(tmp_path, at_exit)
    parent_id = callback.run.run_id
    for name in ("a", "b"):
        job(tmp_path, parent_id, name, objective=0.9, status="FAILED")
    callback.close()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FAILED" and "sweep.best_run_id" not in parent.data.tags
    assert "best/dev_accuracy" not in parent.data.metrics and parent.data.tags["sweep.failed_jobs"] == "2"


def study_worker(tmp_path, at_exit, name):
    """One worker of the Optuna study ``s`` (another terminal, machine or SLURM array task), its own sweep folder."""
    config = sweep_config(tmp_path, task=["seed=1"], sweeper="afqmc_optuna", searched={"optim.lr": "interval(1, 2)"})
    config.hydra.sweep.dir, config.hydra.sweeper.study_name = str(tmp_path / name), "s"
    config.hydra.sweeper.storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config)
    return callback


def study_ends(callback, complete):
    """The sweeper's last word on the study, as it leaves it in the worker's sweep folder, then the worker's end."""
    callback.folder.save_study("s", complete)
    callback.close()


@pytest.mark.parametrize("folders", [("first", "second"), ("shared", "shared")], ids=["own folders", "one folder"])
def test_the_workers_of_one_study_share_one_parent_and_the_last_to_end_closes_it(tmp_path, at_exit, folders):
    """Each worker in a sweep folder of its own, or all given one ``hydra.sweep.dir`` (each then journals the parent
    on its own there: ``outbox.own_journal``)."""
    first, second = (study_worker(tmp_path, at_exit, name) for name in folders)
    parent_id, client = first.run.run_id, first.run.client
    assert (
        second.run.run_id == parent_id == SweepFolder(tmp_path / folders[1]).parent_run_id()
    )  # its jobs nest under it too
    assert first.run.outbox.journal != second.run.outbox.journal
    assert client.get_run(parent_id).data.tags["sweep.study"] == "s"
    job(tmp_path, parent_id, "first's", objective=0.6)
    second_best = job(tmp_path, parent_id, "second's", objective=0.8)
    study_ends(first, complete=False)  # the second worker still runs a trial
    parent = client.get_run(parent_id)
    assert parent.info.status == "RUNNING" and parent.data.tags["sweep.best_run_id"] == second_best
    study_ends(second, complete=True)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "2"
    assert parent.data.metrics["best/dev_accuracy"] == 0.8
    experiment = client.get_experiment_by_name("sweeps").experiment_id
    assert len(client.search_runs([experiment], "tags.`sweep.study` = 's'")) == 1


def test_two_workers_making_the_study_s_parent_at_once_keep_the_earlier(tmp_path, at_exit, monkeypatch):
    """The other worker made its parent between this one's search and its own: this one's is deleted, unused."""
    from afqmc_exp.tracking import store

    other = study_worker(tmp_path, at_exit, "other")
    real_client = store.client

    class Late:  # this worker's first search comes before the other worker's parent was there
        def __init__(self, client):
            self.client, self.searches = client, 0

        def __getattr__(self, name):
            return getattr(self.client, name)

        def search_runs(self, *args, **kwargs):
            self.searches += 1
            return [] if self.searches == 1 else self.client.search_runs(*args, **kwargs)

    monkeypatch.setattr(store, "client", lambda *args, **kwargs: Late(real_client(*args, **kwargs)))
    late = study_worker(tmp_path, at_exit, "late")
    assert late.run.run_id == other.run.run_id
    client = other.run.client
    experiment = client.get_experiment_by_name("sweeps").experiment_id
    deleted = client.search_runs([experiment], run_view_type=2)  # ViewType.DELETED_ONLY
    assert len(deleted) == 1 and deleted[0].data.tags["sweep.study"] == "s"
    for worker in (other, late):  # delivered before tmp_path goes (a thread writing into it then would raise)
        assert worker.run.outbox.drain(30)


def test_a_continued_sweep_reopens_its_own_parent_and_closes_it_over_every_job(tmp_path, at_exit):
    first, client = started(tmp_path, at_exit)
    parent = first.run.run_id
    job(tmp_path, parent, "0", objective=0.6)
    exit_hook(at_exit, first)()  # the sweeping process crashed: its parent closed FAILED
    assert client.get_run(parent).info.status == "FAILED"
    again = MlflowSweepCallback()
    again.on_multirun_start(sweep_config(tmp_path))  # python train.py --multirun resume=<the sweep folder>
    assert again.run.run_id == parent and SweepFolder(tmp_path / "sweep").parent_run_id() == parent
    job(tmp_path, parent, "1", objective=0.7)
    again.on_multirun_end(sweep_config(tmp_path))
    closed = client.get_run(parent)
    assert closed.info.status == "FINISHED" and closed.data.tags["sweep.jobs"] == "2"
    assert closed.data.metrics["best/dev_accuracy"] == 0.7  # the best over every job, not the first close's
    experiment = closed.info.experiment_id
    assert len(client.search_runs([experiment], filter_string="tags.`sweep.dir` != ''")) == 1


def test_a_worker_leaving_the_study_open_counts_a_trial_still_training_as_running_not_failed(tmp_path, at_exit, caplog):
    caplog.set_level("INFO")
    first = study_worker(tmp_path, at_exit, "first")
    parent_id, client = first.run.run_id, first.run.client
    job(tmp_path, parent_id, "first's", objective=0.6)
    job(tmp_path, parent_id, "second's", status=None)  # the other worker's trial, still training
    study_ends(first, complete=False)
    assert client.get_run(parent_id).data.tags["sweep.failed_jobs"] == "0"
    assert "stays RUNNING: 2 jobs so far (1 running), 0 failed" in caplog.text
