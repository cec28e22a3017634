"""MLflow store resolution, params flattening, and concurrent use of one new SQLite store."""

import subprocess
import sys

import pytest

from afqmc_exp.run_folder import RunFolder
from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
from afqmc_exp.tracking.run_tracking import flatten
from afqmc_exp.tracking.store import resolve_uri


def test_relative_sqlite_store_resolves_against_the_launch_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_one_default_store_for_every_command(monkeypatch):
    from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
    from afqmc_exp.tracking.store import default_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_uri() == MlflowTracking().uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_uri() == MlflowTracking().uri == "http://127.0.0.1:5000"


def test_a_store_this_user_may_only_read_is_read_without_its_lock(tmp_path, monkeypatch, store_uri):
    """evaluate/predict (runs:/, models:/) and afqmc-report only read: a shared store whose folder they cannot write
    (no lock file can be made beside it) is read as it is; a new store there is still refused by the lock."""
    from filelock import FileLock, Timeout

    from afqmc_exp.tracking import store

    uri = store_uri  # a shared store, made already
    store.client(uri).create_experiment("theirs")

    def no_write_access(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", self.lock_file)

    monkeypatch.setattr(FileLock, "acquire", no_write_access)
    assert "theirs" in [e.name for e in store.client(uri).search_experiments()]
    with pytest.raises(PermissionError):
        store.client(f"sqlite:///{tmp_path}/new.db")

    def held_by_another_process(self, *args, **kwargs):
        raise Timeout(self.lock_file)

    monkeypatch.setattr(FileLock, "acquire", held_by_another_process)
    with pytest.raises(store.StoreBusy):  # a busy lock is waited for, never skipped (Timeout is an OSError too)
        store.client(uri)


def test_a_store_deleted_or_replaced_in_a_running_process_is_opened_again_not_written_into_the_old_file(
    tmp_path, empty_store_file, monkeypatch
):
    """A notebook that deletes mlflow.db and trains again: MLflow alone keeps its store of the URI with the deleted
    file open, and the runs logged after would vanish with it."""
    import shutil

    from afqmc_exp.tracking import store

    folder = tmp_path / "work"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    shutil.copyfile(empty_store_file, folder / "mlflow.db")
    store.client(uri).create_experiment("before")
    shutil.rmtree(folder)  # deleted
    folder.mkdir()
    store.client(uri).create_experiment("after")
    assert (folder / "mlflow.db").exists()
    from mlflow import MlflowClient

    monkeypatch.chdir(folder)
    as_mlflow_spells_it = MlflowClient("sqlite:///mlflow.db")  # the fluent API's MLFLOW_TRACKING_URI, relative
    assert "after" in [e.name for e in as_mlflow_spells_it.search_experiments()]
    shutil.copyfile(empty_store_file, folder / "other.db")
    (folder / "other.db").replace(folder / "mlflow.db")  # replaced by another
    assert [e.name for e in store.client(uri).search_experiments()] == ["Default"]
    assert [e.name for e in MlflowClient("sqlite:///mlflow.db").search_experiments()] == ["Default"]


def test_flatten_uses_dotted_keys_yaml_values_no_plumbing_and_masks_secrets():
    tree = {
        "optim": {"_target_": "afqmc_exp.training.optim.adamw", "_partial_": True, "lr": 2e-5, "betas": [0.9, 0.99]},
        "tracking": {"api_token": "abc", "password": None, "uri": "postgresql://team:s3cret@db:5432/mlflow"},
        "data": {"test_file": None, "download": True},
        "hub_password": "x",
        "empty": {},
    }
    assert flatten(tree) == {
        "optim.lr": "2e-05",
        "optim.betas": "[0.9, 0.99]",
        "tracking.api_token": "***",
        "tracking.password": "null",
        "tracking.uri": "postgresql://team:***@db:5432/mlflow",
        "data.test_file": "null",
        "data.download": "true",
        "hub_password": "***",
        "empty": "{}",
    }


def test_run_logs_params_tags_metrics_and_status(tmp_path, store_uri):
    tracking = MlflowTracking(uri=store_uri, experiment="e", run_name="r1", flush_every=3)
    run = tracking.start({f"p{i}": str(i) for i in range(250)}, {"t": "v"}, tmp_path)  # > 100: chunked
    for step in range(7):
        run.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
    run.end("FAILED")
    got = run.client.get_run(run.run_id)
    assert got.info.status == "FAILED" and got.info.run_name == "r1" and len(got.data.params) == 250
    assert got.data.tags["t"] == "v"
    history = run.client.get_metric_history(run.run_id, "train/loss")
    assert [m.step for m in history] == list(range(7))


WRITER = """
import sys, tempfile
from pathlib import Path
from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
run = MlflowTracking(uri=sys.argv[1], experiment="race", flush_every=50).start(
    {"worker": sys.argv[2], **{f"p{i}": str(i) for i in range(120)}}, {}, Path(tempfile.mkdtemp()))
for step in range(300):
    run.log_metrics({"m": float(step), "n": -float(step)}, step)
run.end()
"""


@pytest.mark.slow  # starts processes
def test_parallel_processes_can_create_and_share_a_new_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/new.db"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, uri, str(i)], stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
    from afqmc_exp.tracking import store

    client = store.client(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.params["worker"] for r in runs) == ["0", "1", "2", "3"]
    for r in runs:  # no run, param or metric value lost
        assert r.info.status == "FINISHED" and len(r.data.params) == 121
        for key in ("m", "n"):
            assert sorted(m.step for m in client.get_metric_history(r.info.run_id, key)) == list(range(300))


def test_a_reopened_run_skips_steps_already_in_the_store(tmp_path, store_uri):
    tracking = MlflowTracking(uri=store_uri, experiment="e")
    run = tracking.start({}, {}, tmp_path)
    assert run.name and run.name == run.client.get_run(run.run_id).info.run_name  # none given: MLflow's own
    run.log_metrics({"train/loss": 1.0}, 2)
    run.log_metrics({"train/loss": 0.9}, 4)
    run.flush()  # killed here, with its last checkpoint at step 3
    assert run.outbox.drain(30)
    again = tracking.reopen(run.run_id, tmp_path)
    assert again.outbox.drain(30) and again.client.get_run(run.run_id).info.status == "RUNNING"
    again.log_metrics({"train/loss": 0.9}, 4)  # recomputed after resuming from step 3: already there
    again.log_metrics({"train/loss": 0.8, "final/dev_f1": 0.5}, 6)
    again.log_metrics({"final/test_f1": 0.4}, 4)  # a new key at an old step is kept
    again.end()
    history = again.client.get_metric_history(run.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(2, 1.0), (4, 0.9), (6, 0.8)]
    assert [m.step for m in again.client.get_metric_history(run.run_id, "final/test_f1")] == [4]


def test_a_busy_store_is_waited_for_and_never_called_damaged(tmp_path, monkeypatch, caplog):
    """Another process holds the SQLite store's lock: the check waits (saying so once) and succeeds when the
    lock is let go; one that stays locked is called busy, not damaged."""
    import logging
    import sqlite3

    from afqmc_exp.tracking import store as tracking_store

    path = tmp_path / "mlflow.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")

    class LetGoWhenWaitedFor(logging.Handler):  # the other process lets go once the check says it waits
        def emit(self, record):
            if "the store is busy" in record.getMessage() and holder.in_transaction:
                holder.rollback()

    handler = LetGoWhenWaitedFor()
    logging.getLogger("afqmc_exp.tracking.store").addHandler(handler)
    monkeypatch.setattr(tracking_store, "BUSY_WAIT_S", 0.5)
    caplog.set_level("WARNING")
    try:
        assert tracking_store.store_problems(f"sqlite:///{path}") == []
        assert caplog.text.count("the store is busy") == 1 and "waiting up to 0.5 s" in caplog.text
        logging.getLogger("afqmc_exp.tracking.store").removeHandler(handler)
        holder.execute("BEGIN EXCLUSIVE")  # and now it keeps it
        (problem,) = tracking_store.store_problems(f"sqlite:///{path}")
        assert "stayed locked by another process for 0.5 s" in problem and "is damaged" not in problem
    finally:
        logging.getLogger("afqmc_exp.tracking.store").removeHandler(handler)
        holder.rollback() if holder.in_transaction else None


def _logged_then_killed(tmp_path, store_uri):
    """A run that logged train/loss at steps 1..8 (each its own record) and was killed before closing."""
    tracking = MlflowTracking(uri=store_uri, experiment="e")
    run = tracking.start({}, {}, tmp_path)
    for step in range(1, 9):
        run.log_metrics({"train/loss": 1.0 / step}, step)
        run.flush()
    assert run.outbox.drain(30)
    return tracking, run, tmp_path / ".tracking" / "journal.jsonl"


def _resumed_to_the_end(tracking, run, tmp_path, last_step=10):
    again = tracking.reopen(run.run_id, tmp_path)
    for step in range(again.logged_through["train/loss"] + 1, last_step + 1):  # the trainer logs what follows
        again.log_metrics({"train/loss": 1.0 / step}, step)
    again.end()
    assert again.client.get_run(run.run_id).info.status == "FINISHED"
    return [m.step for m in again.client.get_metric_history(run.run_id, "train/loss")]


def test_a_journal_shorter_than_its_delivered_count_is_sent_again_each_step_once(tmp_path, caplog, store_uri):
    """What a crash of the machine can leave: the counter says 9 records were delivered, the journal keeps 5."""
    tracking, run, journal = _logged_then_killed(tmp_path, store_uri)
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:5]))
    assert sorted(_resumed_to_the_end(tracking, run, tmp_path)) == list(range(1, 11))  # none lost, none twice
    assert "were counted as delivered" in caplog.text and (journal.parent / "journal.damaged.jsonl").exists()


def test_an_unreadable_journal_line_is_skipped_with_a_warning_naming_it(tmp_path, caplog, store_uri):
    tracking, run, journal = _logged_then_killed(tmp_path, store_uri)
    lines = journal.read_bytes().split(b"\n")
    lines[3] = lines[3][:10] + b"\xff" + lines[3][11:]  # one byte that is not UTF-8
    journal.write_bytes(b"\n".join(lines))
    assert sorted(_resumed_to_the_end(tracking, run, tmp_path)) == list(range(1, 11))
    assert f"{journal}: line(s) 4 cannot be read" in caplog.text
    caplog.clear()
    tracking.attach(run.run_id, tmp_path)  # the journal was written back whole: no warning the next time
    assert "cannot be read" not in caplog.text


def test_a_journal_line_cut_short_by_a_kill_is_cut_off_without_doubting_the_journal(tmp_path, caplog, store_uri):
    tracking, run, journal = _logged_then_killed(tmp_path, store_uri)
    with open(journal, "a") as out:
        out.write('{"op": "metrics", "metr')
    again = tracking.attach(run.run_id, tmp_path)
    assert not again.outbox.doubted and journal.read_text().endswith("\n") and "cannot be read" not in caplog.text
    assert sorted(_resumed_to_the_end(tracking, run, tmp_path)) == list(range(1, 11))


def test_mlflows_traceback_for_a_store_error_is_left_to_the_outboxs_one_line(tmp_path):
    """A store locked mid-run: MLflow logs an ERROR with two SQLAlchemy tracebacks per failed call, then raises
    to the outbox, which says once that tracking is behind; only MLflow's report of the raised error is dropped."""
    import logging

    MlflowTracking(uri=f"sqlite:///{tmp_path}/m.db", experiment="e").client()
    store_log, seen = logging.getLogger("mlflow.store.db.utils"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    store_log.addHandler(handler)
    try:
        store_log.error("SQLAlchemy database error. The following exception is caught.\n(sqlite3.OperationalError) "
                        "database is locked", exc_info=(RuntimeError, RuntimeError("locked"), None))  # fmt: skip
        store_log.warning("Updating database tables")
    finally:
        store_log.removeHandler(handler)
    assert seen == ["Updating database tables"]


def test_a_lock_held_by_another_process_is_waited_for_saying_what_and_how_long(tmp_path, monkeypatch, caplog,
                                                                               store_uri):  # fmt: skip
    """The store's lock file held (here by the test, as another process would hold it): the wait is said at once,
    with how long it may last; one held past that is one line naming the lock."""
    from filelock import FileLock

    from afqmc_exp.tracking import store

    uri = store_uri  # the store exists
    monkeypatch.setattr(store, "BUSY_WAIT_S", 0.2)
    caplog.set_level("WARNING")
    with FileLock(f"{tmp_path}/mlflow.db.lock"), pytest.raises(store.StoreBusy) as busy:
        store.client(uri)
    (said,) = [r.getMessage() for r in caplog.records if r.name == "afqmc_exp.tracking.store"]
    assert said == (f"{tmp_path}/mlflow.db: another process holds the MLflow store's lock ({tmp_path}/mlflow.db.lock); "
                    "waiting up to 0.2 s for it")  # fmt: skip
    assert str(busy.value).startswith(f"{tmp_path}/mlflow.db: its lock ({tmp_path}/mlflow.db.lock) stayed held by "
                                      "another process for 0.2 s; try again")  # fmt: skip
    caplog.clear()
    store.client(uri)  # let go: taken at once, nothing said
    assert not [r for r in caplog.records if r.name == "afqmc_exp.tracking.store"]


def test_a_store_a_kill_left_with_a_hot_journal_is_not_called_damaged(tmp_path):
    """A process killed in the middle of a write leaves SQLite's rollback journal beside the store: SQLite recovers it
    on the next connection that may write, so it is no damage."""
    import sqlite3
    import sys

    from afqmc_exp.tracking.store import store_problems
    from helpers import run_command

    path = tmp_path / "mlflow.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5000)])
    killed = run_command([sys.executable, "-c", "import os, signal, sqlite3; "
                          f"db = sqlite3.connect({str(path)!r}, isolation_level=None); "
                          "db.execute('PRAGMA cache_size=1'); db.execute('BEGIN'); "
                          "db.execute('UPDATE t SET x = x + 1'); os.kill(os.getpid(), signal.SIGKILL)"])  # fmt: skip
    assert killed.returncode == -9 and (tmp_path / "mlflow.db-journal").exists()
    assert store_problems(f"sqlite:///{path}") == []
    with sqlite3.connect(path) as db:  # rolled back: the cut write never happened
        assert db.execute("SELECT sum(x) FROM t").fetchone()[0] == sum(range(5000))


def test_the_printed_mlflow_ui_command_runs_as_pasted_on_any_path(tmp_path, caplog):
    """The summary's last line is a command to paste: on a store under a folder with spaces and Chinese characters
    a shell must still read it as one --backend-store-uri."""
    import shlex

    from afqmc_exp.training.outputs import log_summary
    from afqmc_exp.training.trainer import FitResult
    from helpers import run_command

    store = tmp_path / "my runs" / "实验 1" / "mlflow.db"
    tracking = MlflowTracking(uri=f"sqlite:///{store}", experiment="e", run_name="r")
    caplog.set_level("INFO", logger="afqmc_exp.training.outputs")
    log_summary(FitResult(0.5, 1, tmp_path, 1), {}, "accuracy", RunFolder(tmp_path), tracking)
    (line,) = [r.getMessage() for r in caplog.records if "mlflow ui" in r.getMessage()]
    pasted = line[line.index("mlflow ui") :]
    expected = ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1", "--workers", "1"]
    assert shlex.split(pasted) == expected
    shell = run_command(["bash", "-c", f"printf '%s\\n' {pasted}"])  # as bash reads the pasted line
    assert shell.stdout.splitlines() == expected


def test_the_summary_names_the_disk_the_weights_take_and_their_copy(tmp_path, caplog):
    from afqmc_exp.training.outputs import log_summary
    from afqmc_exp.training.trainer import FitResult

    (tmp_path / "best_model").mkdir()
    (tmp_path / "best_model" / "model.safetensors").write_bytes(b"\0" * 3_000_000)
    caplog.set_level("INFO", logger="afqmc_exp.training.outputs")
    for log_weights, copy in ((True, True), (False, False)):
        caplog.clear()
        tracking = MlflowTracking(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="e", log_weights=log_weights)
        log_summary(FitResult(0.5, 1, tmp_path / "best_model", 1), {}, "accuracy", RunFolder(tmp_path), tracking)
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("best weights:")]
        assert "(3 MB on disk" in line and ("tracking.log_weights=false keeps one" in line) == copy, line


def test_the_summary_line_names_the_best_and_every_score_of_the_best_weights():
    from pathlib import Path

    from afqmc_exp.training.outputs import result_line
    from afqmc_exp.training.trainer import FitResult

    final = {"final/dev_accuracy": 0.73, "final/dev_f1": 0.5, "final/dev_f1_0": 0.8, "final/dev_loss": 0.52,
             "final/dev_macro_f1": 0.6, "final/test_accuracy": 0.7}  # fmt: skip
    assert result_line(FitResult(0.7316, 600, Path("best_model"), 1000), final, "accuracy") == (
        "Best dev accuracy 0.7316 at step 600 of 1000; the best weights scored again from disk: dev_accuracy=0.7300 "
        "dev_f1=0.5000 dev_macro_f1=0.6000 test_accuracy=0.7000"
    )
    in_bf16 = FitResult(0.925, 60, Path("best_model"), 60, eval_precision="bf16")  # the quickstart on an AMX CPU
    assert result_line(in_bf16, {"final/dev_accuracy": 0.9313}, "accuracy") == (
        "Best dev accuracy 0.9250 (evaluated in bf16) at step 60 of 60; the best weights scored again from disk in "
        "fp32: dev_accuracy=0.9313"
    )


def test_the_summary_names_a_server_store_as_a_link_its_password_masked(tmp_path, caplog):
    from afqmc_exp.training.outputs import log_summary
    from afqmc_exp.training.trainer import FitResult

    tracking = MlflowTracking(uri="http://alice:s3cret@mlflow-host:5000", experiment="e", run_name="r")
    caplog.set_level("INFO", logger="afqmc_exp.training.outputs")
    log_summary(FitResult(0.5, 1, tmp_path / "best_model", 1), {}, "accuracy", RunFolder(tmp_path), tracking)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow run")]
    assert line == "MLflow run 'r' in experiment 'e': http://alice:***@mlflow-host:5000"


def test_each_run_sets_its_experiment_s_runs_view_and_the_summary_links_it(tmp_path, store_uri, caplog):
    """The runs table's shared view (the one columns setting MLflow's server keeps): the run's metric, best first,
    beside what tells runs apart; the run's last lines link it, a server's password left out."""
    import json

    from afqmc_exp.tracking import store
    from afqmc_exp.training.outputs import log_summary
    from afqmc_exp.training.trainer import FitResult

    caplog.set_level("INFO", logger="afqmc_exp.training.outputs")
    for metric, best_first_is_low in (("accuracy", False), ("loss", True)):
        tracking = MlflowTracking(uri=store_uri, experiment="e", run_name="r")
        run = tracking.start({}, {"metric": metric}, tmp_path / metric)
        run.end("FINISHED")
        experiment = store.client(store_uri).get_experiment_by_name("e")
        assert run.experiment_id == experiment.experiment_id
        assert json.loads(experiment.tags["mlflow.sharedViewState.afqmc"]) == {
            "selectedColumns": [f"metrics.`best/dev_{metric}`", "metrics.`final/dev_loss`", "tags.`model`",
                                "tags.`task`", "params.`optim.lr`",
                                "params.`data.batch_size`", "params.`seed`"],
            "orderByKey": f"metrics.`best/dev_{metric}`", "orderByAsc": best_first_is_low}  # fmt: skip
    for uri, ui in (
        (store_uri, "http://127.0.0.1:5000"),
        ("http://alice:s3cret@mlflow-host:5000", "http://mlflow-host:5000"),
    ):
        caplog.clear()
        tracking = MlflowTracking(uri=uri, experiment="e", run_name="r")
        log_summary(FitResult(0.5, 1, tmp_path / "best_model", 1), {}, "loss", RunFolder(tmp_path), tracking, "7")
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("its runs")]
        said = "its runs beside each other (best dev loss, dev loss, model, task, lr, batch, seed)"
        assert line == f"{said}: {ui}/#/experiments/7/runs?viewStateShareKey=afqmc"


def test_a_lookup_finds_a_store_whose_path_has_uri_characters_or_that_another_process_holds(tmp_path, empty_store_file):
    """A lookup (``create=False``) refuses only a file that is no MLflow store: a path with ``#`` or ``%`` in it, or a
    store another process is writing (locked, or a journal to roll back after a kill) is one, and is used."""
    import shutil
    import sqlite3

    from afqmc_exp.tracking import store

    folder = tmp_path / "my#proj 100%"
    folder.mkdir()
    shutil.copyfile(empty_store_file, folder / "mlflow.db")
    store.client(f"sqlite:///{folder / 'mlflow.db'}", create=False).search_experiments()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my#proj 100%"]  # nothing made beside it
    writer = sqlite3.connect(folder / "mlflow.db", isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        assert store._holds_mlflow(folder / "mlflow.db")
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_server_store_that_is_down_is_said_at_once_not_after_mlflows_retries(tmp_path, caplog):
    """MLflow retries a request to a server that does not answer for about four minutes (measured: 246 s for a
    refused connection) before it raises. A store a command must ask now (a new run, a lookup) is asked once,
    without retries: the error names the store (its password masked) and what to do. A resumed run does not ask:
    its writes wait in the outbox until the store is back."""
    import http.server
    import threading

    from afqmc_exp.tracking import store
    from helpers import free_port

    down = f"http://alice:hunter2@127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(store.StoreUnreachable) as refused:
        store.client(down, create=False)
    message = str(refused.value)
    assert "no MLflow server answers" in message and "hunter2" not in message and "mlflow server" in message
    assert store.client(down, asked=False).tracking_uri == down  # a resumed run's client: nothing asked yet
    with pytest.raises(store.RunNotFound, match="no MLflow server answers"):  # resume=<run id>
        store.tags_of_run(down, "a" * 32)
    from afqmc_exp.tracking.stored_weights import FetchError, local_weights

    with pytest.raises(FetchError, match=r"ckpt=runs:/abc/best_model: .*no MLflow server answers"):
        local_weights("runs:/abc/best_model", down)

    class Answers(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # any answer (a 404 too) is a server that is there
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = f"http://127.0.0.1:{server.server_address[1]}"
        assert store.client(up, create=False).tracking_uri == up
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(store.StoreUnreachable):  # gone since (between a sweep's jobs): asked again, not remembered
        store.client(up, create=False)
    from afqmc_exp.tracking.mlflow_run import Run

    # a resumed run reading what the store holds: said, and it goes on
    assert Run(store.client(down, asked=False), "a" * 32, tmp_path / "run").store_steps() == {}
    assert "Retrying" not in caplog.text  # urllib3's line for each of MLflow's retries: none was made


def test_a_new_run_on_a_server_store_that_is_down_is_refused_in_one_line(tmp_path):
    from afqmc_exp.tracking.mlflow_tracking import TrackingUnavailable
    from helpers import free_port

    tracking = MlflowTracking(uri=f"http://127.0.0.1:{free_port()}", experiment="x")
    with pytest.raises(
        TrackingUnavailable, match=r"^tracking.uri=http:.*: no MLflow server answers \(connection refused\); start it"
    ):
        tracking.start({}, {}, tmp_path / "run")
