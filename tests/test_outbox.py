"""The outbox (``tracking/outbox.py``): MLflow writes journaled in the run folder's ``.tracking`` and delivered in
order, kept while the store does not answer and delivered once it does, a damaged journal kept aside and sent
again whole; and the run's ``DELIVERY`` table (``tracking/mlflow_run.py``) against a real SQLite store."""

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from afqmc_exp.tracking.outbox import Outbox


class Store:
    """What the outbox delivers to: records in the order they arrived (with ``replayed``), refusing while down."""

    def __init__(self, down: bool = False):
        self.down, self.got, self.calls = down, [], 0
        self.refused = threading.Event()

    def __call__(self, record: dict, replayed: bool) -> None:
        self.calls += 1
        if self.down:
            self.refused.set()
            raise ConnectionError("store unreachable")
        self.got.append((record, replayed))


class CaughtUp(logging.Handler):
    """How many records the store held each time the outbox said it caught up."""

    def __init__(self, store: Store):
        super().__init__()
        self.store, self.said_with = store, []

    def emit(self, record: logging.LogRecord) -> None:
        if "tracking caught up" in record.getMessage():
            self.said_with.append(len(self.store.got))


def metrics(step: int) -> dict:
    return {"op": "metrics", "metrics": [["train/loss", 1.0 / step, 0, step]]}


def left_behind(folder, lines: list[str], sent: int | str) -> None:
    """What an earlier process leaves in ``.tracking``: the journal's lines and its count of delivered records."""
    (folder / ".tracking").mkdir(parents=True, exist_ok=True)
    text = "".join(f"{line}\n" for line in lines)
    (folder / ".tracking" / "journal.jsonl").write_bytes(text.encode("utf-8", "surrogateescape"))
    (folder / ".tracking" / "sent").write_text(str(sent))


def delivered(outbox: Outbox, store: Store) -> list:
    outbox.start()
    outbox.close()
    assert outbox.drain(10)
    return store.got


def test_records_are_delivered_in_journal_order_and_counted(tmp_path):
    store = Store()
    outbox = Outbox(tmp_path, store)
    records = [metrics(step) for step in range(1, 31)] + [{"op": "end", "status": "FINISHED"}]
    for record in records:
        outbox.put(record)
    assert delivered(outbox, store) == [(r, False) for r in records]
    journal = (tmp_path / ".tracking" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in journal] == records
    assert (tmp_path / ".tracking" / "sent").read_text() == "31"


def test_a_store_that_does_not_answer_keeps_every_record_until_it_does_then_delivers_each_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    store = Store(down=True)
    outbox = Outbox(tmp_path, store, retry_seconds=0.01)
    records = [metrics(step) for step in range(1, 6)]
    for record in records:
        outbox.put(record)
    assert store.refused.wait(10) and not outbox.drain(0.2)
    assert outbox.pending == 5 and not (tmp_path / ".tracking" / "sent").exists()  # nothing counted delivered
    assert len((tmp_path / ".tracking" / "journal.jsonl").read_text().splitlines()) == 5
    assert caplog.text.count("tracking is behind") == 1  # said once, however many retries
    journal = tmp_path / ".tracking" / "journal.jsonl"
    assert "does not answer (store unreachable). Training goes on;" in caplog.text  # what the store said, and
    assert f"record(s) wait in {journal} and are sent when it answers" in caplog.text  # where the records wait
    caught_up = CaughtUp(store)
    logging.getLogger("afqmc_exp.tracking.outbox").addHandler(caught_up)
    store.down = False
    try:
        assert delivered(outbox, store) == [(r, False) for r in records]
    finally:
        logging.getLogger("afqmc_exp.tracking.outbox").removeHandler(caught_up)
    assert store.calls > 6 and caught_up.said_with == [5]  # it retried, and said it caught up once all 5 arrived
    outbox._thread.join(5)  # closed and delivered: the sender ends (one run after another leaves no thread behind)
    assert not outbox._thread.is_alive()


def test_a_process_whose_store_does_not_answer_exits_without_waiting_for_the_sender(tmp_path):
    """What could not be delivered waits in the journal for the next process: the sender, retrying, never keeps the
    run's process from ending."""
    script = (
        "import sys; from afqmc_exp.tracking.outbox import Outbox\n"
        "def down(record, replayed): raise ConnectionError('store unreachable')\n"
        "outbox = Outbox(sys.argv[1], down); outbox.put({'op': 'end', 'status': 'FINISHED'}); outbox.close()\n"
    )
    ended = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert ended.returncode == 0, ended.stderr
    assert Outbox(tmp_path, Store()).pending == 1


LEAVE_UNDELIVERED = (  # a process that journals records in a shared folder while its store is down, then ends
    "import sys; from afqmc_exp.tracking.outbox import Outbox\n"
    "def down(record, replayed): raise ConnectionError('store unreachable')\n"
    "outbox = Outbox(sys.argv[1], down, shared=True)\n"
    "for n in (1, 2): outbox.put({'op': 'tags', 'tags': {'from': f'dead {n}'}})\n"
    "print('journaled', flush=True)\n"
    "sys.stdin.read()  # alive until the test closes its stdin\n"
)


def test_processes_logging_one_run_from_one_folder_each_deliver_their_own_records_once(tmp_path):
    """A sweep's parent run is logged from its folder by every process that runs the sweep: two continuations, or
    an Optuna study's workers given one ``hydra.sweep.dir``. Each keeps a journal of its own there, so none sends
    another's records again or counts them as its own."""
    first_store, second_store = Store(), Store()
    first, second = Outbox(tmp_path, first_store, shared=True), Outbox(tmp_path, second_store, shared=True)
    for n in (1, 2):
        first.put({"op": "tags", "tags": {"from": f"first {n}"}})
        second.put({"op": "tags", "tags": {"from": f"second {n}"}})
    for outbox in (first, second):
        outbox.close()
        assert outbox.drain(10)
    assert [r["tags"]["from"] for r, _ in first_store.got] == ["first 1", "first 2"]
    assert [r["tags"]["from"] for r, _ in second_store.got] == ["second 1", "second 2"]
    assert first.folder != second.folder and first.pending == second.pending == 0


def test_what_a_process_that_ended_left_in_a_shared_folder_is_delivered_by_the_next_and_a_live_ones_is_not(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", LEAVE_UNDELIVERED, str(tmp_path / "sweep")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert live.stdout.readline() == "journaled\n"  # open first: it would take over the other's journal as it opens
    ended = subprocess.run([sys.executable, "-c", LEAVE_UNDELIVERED, str(tmp_path / "sweep")], input="",
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ended.returncode == 0, ended.stderr
    try:
        store = Store()
        outbox = Outbox(tmp_path / "sweep", store, shared=True)
        outbox.put({"op": "end", "status": "FINISHED"})
        outbox.close()
        assert outbox.drain(10)
        sent = [(r.get("tags", {}).get("from", r["op"]), replayed) for r, replayed in store.got]
        assert sent == [("dead 1", True), ("dead 2", True), ("end", False)]  # the live process's two are its own
        again = Store()
        later = Outbox(tmp_path / "sweep", again, shared=True)
        later.close()
        assert later.drain(10) and again.got == []  # adopted once: not delivered again by a later process
    finally:
        live.communicate("", timeout=60)


def test_the_one_journal_a_sweep_folder_kept_before_is_delivered_by_the_first_process_of_the_new_kind(tmp_path):
    """A sweep started by a version with one shared journal, continued by this one: its undelivered records are
    delivered, and that journal goes."""
    left_behind(tmp_path, [json.dumps(metrics(1)), json.dumps(metrics(2))], sent=1)
    store = Store()
    outbox = Outbox(tmp_path, store, shared=True)
    outbox.start()
    outbox.close()
    assert outbox.drain(10) and store.got == [(metrics(2), True)]
    assert not (tmp_path / ".tracking" / "journal.jsonl").exists() and not (tmp_path / ".tracking" / "sent").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an upload's progress is read from /proc")
def test_an_upload_the_store_takes_then_fails_is_not_waited_for_again_and_again(tmp_path):
    """A store that takes the bytes and then fails (a full disk, a proxy's 413) is sent the file at each retry: once
    the record has failed, its upload's motion no longer holds the end of the run."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(50 * 64 * 1024))
    attempts = []

    def fails_after_reading(record, replayed):
        attempts.append(1)
        uploading(weights)(record, replayed)
        raise ConnectionError("500 Internal Server Error")

    outbox = Outbox(tmp_path / "run", fails_after_reading, retry_seconds=0.01)
    outbox.put({"op": "artifacts", "path": str(tmp_path), "artifact_path": "best_model"})
    assert not outbox.drain(0.3) and len(attempts) <= 2


def test_a_journal_an_ended_process_left_is_adopted_whatever_its_pid_and_however_it_named_its_files(
    tmp_path, monkeypatch
):
    """In a container every launch can have the same pid; the process that left a journal may have named its staged
    files relative to where it started: neither keeps its records from the next process, files included."""
    import os

    monkeypatch.chdir(tmp_path)
    dead = tmp_path / "sweep" / ".tracking" / f"{os.getpid()}-abcdef"  # this pid, but no process holds its lock
    (dead / "masked" / "hydra").mkdir(parents=True)
    (dead / "masked" / "hydra" / "multirun.yaml").write_text("lr: 1\n")
    staged = os.path.relpath(dead / "masked" / "hydra", tmp_path)
    (dead / "journal.jsonl").write_text(
        json.dumps({"op": "artifacts", "path": staged, "artifact_path": "hydra"}) + "\n"
    )
    got = []
    outbox = Outbox(tmp_path / "sweep", lambda record, replayed: got.append(Path(record["path"])), shared=True)
    outbox.start()
    outbox.close()
    assert outbox.drain(10) and len(got) == 1 and (got[0] / "multirun.yaml").read_text() == "lr: 1\n"


def test_the_end_waits_for_a_slow_store_that_answers_and_gives_up_on_one_that_does_not(tmp_path):
    """``drain(t)`` bounds the time without a delivery, not the whole delivery: a backlog that takes longer
    than ``t`` in all is delivered by a store that answers each record in time (a catch-up on a loaded machine);
    a record the store does not answer within ``t`` ends the wait."""
    store = Store()
    slow = lambda record, replayed: (time.sleep(0.03), store(record, replayed))  # noqa: E731
    outbox = Outbox(tmp_path, slow)
    for step in range(1, 21):  # 20 records, 0.6 s in all
        outbox.put(metrics(step))
    outbox.close()
    assert outbox.drain(0.3) and len(store.got) == 20

    hung = threading.Event()
    stuck = Outbox(tmp_path / "stuck", lambda record, replayed: hung.wait(5))
    stuck.put(metrics(1))
    started = time.monotonic()
    assert not stuck.drain(0.3) and time.monotonic() - started < 3
    hung.set()


def uploading(path, hang: threading.Event | None = None):
    """A delivery that sends a file as an HTTP upload does, reading it as the link takes it (64 KiB every 20 ms,
    1 s for this file); with ``hang``, the link stops after the first quarter and the file stays open."""

    def deliver(record: dict, replayed: bool) -> None:
        with open(path, "rb") as file:
            while chunk := file.read(64 * 1024):
                time.sleep(0.02)
                if hang is not None and file.tell() > path.stat().st_size // 4:
                    hang.wait(10)
                    return
            assert chunk == b""

    return deliver


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an upload's progress is read from /proc")
def test_the_end_waits_for_an_upload_longer_than_the_wait_while_it_moves_and_gives_up_once_it_stalls(tmp_path):
    """A single record can take longer than ``drain(t)`` to deliver: the best weights (400 MB for BERT-base) on a
    slow link. While its file is read for sending, the wait goes on; an upload that stops moving for ``t`` ends
    it, as a store that does not answer does."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(50 * 64 * 1024))
    outbox = Outbox(tmp_path / "run", uploading(weights))
    outbox.put({"op": "artifacts", "path": str(tmp_path), "artifact_path": "best_model"})
    outbox.close()
    assert outbox.drain(0.3)

    hung = threading.Event()
    stalled = Outbox(tmp_path / "stalled", uploading(weights, hang=hung))
    stalled.put({"op": "artifacts", "path": str(tmp_path), "artifact_path": "best_model"})
    started = time.monotonic()
    assert not stalled.drain(0.3) and time.monotonic() - started < 3
    hung.set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an upload's progress is read from /proc")
def test_bytes_a_connection_has_not_sent_yet_are_counted_and_move_as_the_other_end_reads():
    """The tail of an upload waits in the connection's send queue after its file has been read whole: the queue
    is part of what moves (``uploads.upload_position``), so the end of a run waits for it too."""
    import socket

    from afqmc_exp.tracking.uploads import upload_position

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # a slow line's small window
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as sender, listener.accept()[0] as receiver:
            sender.setblocking(False)
            sent = sender.send(bytes(4 << 20))  # as much as the queue takes
            offsets, queued = upload_position()
            assert 0 < queued <= sent
            deadline = time.monotonic() + 10
            while upload_position() == (offsets, queued):
                receiver.recv(1 << 16)  # the line takes some: the queue moves
                assert time.monotonic() < deadline


def test_what_an_earlier_process_left_undelivered_is_delivered_by_the_next_one_as_replayed(tmp_path):
    """Killed after delivering 2 of 4 records: the next process sends the other 2 (which may have reached the store
    already: replayed), then its own."""
    left_behind(tmp_path, [json.dumps(metrics(step)) for step in range(1, 5)], sent=2)
    store = Store()
    outbox = Outbox(tmp_path, store)
    assert not outbox.doubted and outbox.pending == 2
    outbox.put(metrics(5))
    assert delivered(outbox, store) == [(metrics(3), True), (metrics(4), True), (metrics(5), False)]
    assert Outbox(tmp_path, Store()).pending == 0  # the count reached the disk: nothing for a third process


def test_a_permanent_refusal_skips_that_record_and_the_next_ones_are_delivered(tmp_path, caplog):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    def deliver(record, replayed):
        if record["op"] == "params":
            raise MlflowException("param changed value", error_code=INVALID_PARAMETER_VALUE)  # HTTP 400
        store(record, replayed)

    store = Store()
    outbox = Outbox(tmp_path, deliver, retry_seconds=0.01)
    for record in (metrics(1), {"op": "params", "params": {"a": "1"}}, metrics(2)):
        outbox.put(record)
    assert delivered(outbox, store) == [(metrics(1), False), (metrics(2), False)]
    assert "MLflow refused a params record for good (param changed value)" in caplog.text


REFUSALS = {"INVALID_PARAMETER_VALUE": True, "RESOURCE_DOES_NOT_EXIST": True,  # HTTP 400, 404: for good
            "TEMPORARILY_UNAVAILABLE": False, "INTERNAL_ERROR": False}  # 503, 500: the store in trouble  # fmt: skip


@pytest.mark.parametrize(("code", "for_good"), REFUSALS.items())
def test_a_bad_request_or_a_deleted_run_is_refused_for_good_and_a_store_in_trouble_is_retried(code, for_good):
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    from afqmc_exp.tracking.outbox import permanent

    assert permanent(MlflowException("x", error_code=getattr(databricks_pb2, code))) is for_good
    assert not permanent(ConnectionError("Max retries exceeded"))


CORRUPT = {
    "not JSON": "@@ not json @@",
    "truncated JSON": '{"op": "metrics", "metrics": [["train/loss", 0.5, 0, 2',
    "JSON without an op": '{"metrics": []}',
    "not UTF-8": '{"op": "metrics\udcff"}',
}


@pytest.mark.parametrize("line", CORRUPT.values(), ids=CORRUPT.keys())
@pytest.mark.parametrize("sent", [3, 1], ids=["all delivered", "one delivered"])  # before the damage
def test_a_corrupt_journal_line_keeps_the_damaged_journal_and_sends_every_readable_record_again(tmp_path, line, sent,
                                                                                                caplog):  # fmt: skip
    left_behind(tmp_path, [json.dumps(metrics(1)), line, json.dumps(metrics(3))], sent=sent)
    journal = tmp_path / ".tracking" / "journal.jsonl"
    damaged = journal.read_bytes()
    store = Store()
    outbox = Outbox(tmp_path, store)
    assert outbox.doubted
    assert (tmp_path / ".tracking" / "journal.damaged.jsonl").read_bytes() == damaged  # kept as it was
    assert [json.loads(x) for x in journal.read_text().splitlines()] == [metrics(1), metrics(3)]  # rewritten
    assert f"{journal}: line(s) 2 cannot be read" in caplog.text and "journal.damaged.jsonl" in caplog.text
    # every readable record again, as replayed (the run filters what the store holds), none twice
    assert delivered(outbox, store) == [(metrics(1), True), (metrics(3), True)]
    caplog.clear()
    again = Outbox(tmp_path, Store())  # the journal now adds up: not doubted again, nothing left to send
    assert not again.doubted and again.pending == 0 and "cannot be read" not in caplog.text


def test_a_journal_damaged_again_keeps_every_damaged_copy(tmp_path):
    """The evidence of an earlier damage (a disk that fails now and then) is not overwritten by the next one's."""
    copies = []
    for damage in (CORRUPT["not JSON"], CORRUPT["truncated JSON"]):
        shutil.rmtree(tmp_path / ".tracking", ignore_errors=True)
        for kept in copies:  # what the earlier damage left beside the journal
            (tmp_path / ".tracking").mkdir(exist_ok=True)
            (tmp_path / ".tracking" / kept[0]).write_bytes(kept[1])
        left_behind(tmp_path, [json.dumps(metrics(1)), damage, json.dumps(metrics(3))], sent=3)
        Outbox(tmp_path, Store())
        copies = [(p.name, p.read_bytes()) for p in sorted((tmp_path / ".tracking").glob("journal.damaged*"))]
    kept = dict(copies)
    assert sorted(kept) == ["journal.damaged.2.jsonl", "journal.damaged.jsonl"]
    assert CORRUPT["not JSON"].encode() in kept["journal.damaged.jsonl"]  # the first damage, as it was
    assert CORRUPT["truncated JSON"].encode() in kept["journal.damaged.2.jsonl"]


def test_an_unreadable_delivered_count_doubts_the_journal_and_sends_it_again(tmp_path, caplog):
    left_behind(tmp_path, [json.dumps(metrics(1)), json.dumps(metrics(2))], sent="2\x00garbage")
    store = Store()
    outbox = Outbox(tmp_path, store)
    assert outbox.doubted and "were counted as delivered" in caplog.text
    assert delivered(outbox, store) == [(metrics(1), True), (metrics(2), True)]


def test_a_last_line_cut_short_by_a_kill_is_cut_off_without_doubting_the_journal(tmp_path):
    left_behind(tmp_path, [json.dumps(metrics(1))], sent=1)
    journal = tmp_path / ".tracking" / "journal.jsonl"
    with open(journal, "a") as out:
        out.write('{"op": "metrics", "metr')  # never acknowledged: no newline after it
    store = Store()
    outbox = Outbox(tmp_path, store)
    assert not outbox.doubted and not (tmp_path / ".tracking" / "journal.damaged.jsonl").exists()
    assert journal.read_text() == json.dumps(metrics(1)) + "\n"
    outbox.put(metrics(2))  # starts a line of its own
    assert delivered(outbox, store) == [(metrics(2), False)]
    assert [json.loads(x) for x in journal.read_text().splitlines()] == [metrics(1), metrics(2)]


# ------------------------------------------------------------------------------------ the run's deliveries
@pytest.fixture
def sqlite_run(tmp_path, store_uri):
    """A real MLflow run in a SQLite store in tmp_path, and the client of that store."""
    from afqmc_exp.tracking import store

    client = store.client(store_uri)
    run_id = client.create_run(client.create_experiment("outbox")).info.run_id
    return client, run_id


def test_an_unknown_op_is_warned_and_skipped_and_the_records_after_it_are_delivered(tmp_path, sqlite_run, caplog):
    from afqmc_exp.tracking.mlflow_run import Run

    client, run_id = sqlite_run
    run = Run(client, run_id, tmp_path / "run")
    run.outbox.put({"op": "from_a_newer_version", "payload": 1})
    run.log_params({"optim.lr": "2e-05"})
    run.end()
    assert f"MLflow run {run_id}: a journaled 'from_a_newer_version' record this version cannot send" in caplog.text
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED" and stored.data.params == {"optim.lr": "2e-05"}


def test_a_store_that_goes_away_mid_run_gets_every_write_once_when_it_is_back(tmp_path, sqlite_run, monkeypatch):
    """The run writes to a store nobody answers at (a real connection refused); the journal keeps everything; when
    the store answers again (here: the run's client is the SQLite store's), params, each metric step, tags and the
    final status reach it once, in order."""
    from mlflow import MlflowClient

    from afqmc_exp.tracking.mlflow_run import Run
    from helpers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, not after MLflow's back-off
    client, run_id = sqlite_run
    run = Run(MlflowClient(f"http://127.0.0.1:{free_port()}"), run_id, tmp_path / "run", flush_every=2)
    run.outbox.retry_seconds = 0.01
    run.log_params({"optim.lr": "2e-05"})
    for step in range(1, 8):
        run.log_metrics({"train/loss": 1.0 / step}, step)
    run.set_tags({"phase": "one"})
    run.set_tags({"phase": "two"})  # the later value wins: order kept
    run.drain_seconds = 0.2
    run.end()
    assert run.outbox.pending > 0 and client.get_run(run_id).info.status == "RUNNING"
    deadline = time.monotonic() + 10
    while run.outbox.behind_since is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.client = client  # the store answers again
    assert run.outbox.drain(20)
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED" and stored.data.params == {"optim.lr": "2e-05"}
    assert stored.data.tags["phase"] == "two"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 8))


def test_a_replayed_metric_record_already_in_the_store_is_not_logged_twice(tmp_path, monkeypatch):
    """Killed between delivering two records and counting them: the next process sends them again, and only the
    steps the store does not hold yet reach it. MLflow's file store keeps a metric value logged twice twice (SQLite
    would drop the exact copy itself), so it shows what the run's own filter does."""
    from mlflow import MlflowClient

    from afqmc_exp.tracking.mlflow_run import Run

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file://{tmp_path / 'mlruns'}")
    run_id = client.create_run(client.create_experiment("outbox")).info.run_id
    folder = tmp_path / "run"
    run = Run(client, run_id, folder)
    for step in (1, 2, 3):
        run.log_metrics({"train/loss": 1.0 / step}, step)
        run.flush()
    assert run.outbox.drain(10)
    (folder / ".tracking" / "sent").write_text("1")  # records 2 and 3 delivered, their count lost
    again = Run(client, run_id, folder)
    again.log_metrics({"train/loss": 0.25}, 4)
    again.end()
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
