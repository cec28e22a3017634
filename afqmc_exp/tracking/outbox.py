"""An outbox for MLflow writes, so that a tracking store that stops answering never costs training.

Every write a run makes (metrics, params, tags, artifacts, the final status) is appended as one JSON line
to a journal in the run folder (``.tracking/journal.jsonl``) and delivered, in order, by a background
thread. While the store does not answer, the thread retries with growing pauses and the log says once
that tracking is behind; training and checkpointing go on, and nothing is lost: the journal is on disk.
The end of a run waits for the thread to catch up while the store answers, up to ``drain_seconds`` in which
nothing moved (no delivery, and no upload going on: see ``uploads``); what is still pending is delivered by the
next process that opens the run folder (``resume``, which for a finished run only does that).

``.tracking/sent`` counts the records already delivered. A record can be delivered twice only if the
process dies between delivering it and counting it; metrics are then filtered against what the store
holds (see ``mlflow_run.Run``), and params, tags and artifacts are idempotent.

A sweep's parent run is logged from the sweep's folder by every process that runs the sweep at once (two
continuations, an Optuna study's workers given one ``hydra.sweep.dir``). One journal and one count there would mix
them: each process would send the others' records again and write its own count over theirs. So that folder keeps
a journal per process (``shared``: ``.tracking/<pid>-<hex>/``, locked while the process lives), and a process
that opens it first takes over what ended ones left undelivered (:func:`adopt_ended`).

The journal is not trusted blindly. A last line cut short by a kill was never acknowledged: it is cut off.
A journal that does not add up (a line that cannot be read, or fewer records than were counted delivered,
as a crash of the machine rather than of the process can leave) is *doubted*: the damaged file is kept
beside it, the readable records are written back as the journal, and all of them are delivered again with
the same filtering, so the store ends with every step once whatever was lost.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..files import InUse, let_go, replaced_file, take
from ..run_folder import RunFolder
from .store import first_line
from .uploads import upload_position

log = logging.getLogger(__name__)


class Outbox:
    """Records appended with :meth:`put` reach ``deliver(record, replayed)`` in order, from a background thread
    (``replayed``: the record was left by an earlier process, which may have delivered it already)."""

    def __init__(
        self, folder: Path, deliver: Callable[[dict, bool], None], retry_seconds: float = 2.0, shared: bool = False
    ):
        """``shared``: several processes log one run from ``folder`` (a sweep's parent): a journal each (see
        :func:`own_journal`), and what ended ones left undelivered is delivered by this one."""
        root = RunFolder(folder).journal
        self.folder = own_journal(root) if shared else root
        self.folder.mkdir(parents=True, exist_ok=True)
        self.journal, self.counter = self.folder / "journal.jsonl", self.folder / "sent"
        if shared:
            adopt_ended(root, self.folder)
        self.deliver, self.retry_seconds = deliver, retry_seconds
        self.records, unreadable, self.sent = counted_journal(self.folder)
        self.doubted = bool(unreadable) or self.sent > len(self.records)
        if self.doubted:
            self._start_again(unreadable)
        self.first_new = len(self.records)  # records before it were left by an earlier process
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.behind_since: float | None = None
        self._delivered_at = 0.0  # time.monotonic() of the last delivery (drain waits while records move)
        self._uploading_said = False
        self._failed = -1  # the number of the last record an attempt to deliver failed (see _upload_moved)
        self._position, self._looked_at = None, 0.0  # the upload's position at drain's last look

    def _start_again(self, unreadable: list[int]) -> None:
        """A journal that does not add up: kept aside, rewritten from its readable records, all sent again."""
        why = f"line(s) {', '.join(map(str, unreadable))} cannot be read" if unreadable else \
            f"it holds {len(self.records)} record(s) but {self.sent} were counted as delivered"  # fmt: skip
        self.sent = 0
        self._write_counter()  # first: a kill from here on finds a journal that is sent again whole
        kept = _aside(self.journal)
        shutil.copyfile(self.journal, kept)
        with replaced_file(self.journal) as out:
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records))
        log.warning("%s: %s; its readable records are sent again (the store keeps each step once); the damaged "
                    "file is kept as %s", self.journal, why, kept)  # fmt: skip

    @property
    def pending(self) -> int:
        return len(self.records) - self.sent

    def put(self, record: dict) -> None:
        """Append ``record`` to the journal (it survives a kill from here on) and wake the sender."""
        with open(self.journal, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()
        self.start()

    def start(self) -> None:
        """Start the sender thread if there is something to send (a reopened run may have a backlog)."""
        if self.pending and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._send_forever, name="mlflow-outbox", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """No more records will come: the sender thread ends once it has delivered what there is."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait for every record to be delivered, giving up once ``timeout`` seconds pass in which nothing moved
        (a store that does not answer); True when none is pending. Moving is a delivery, or an upload going on
        (``uploads.upload_position``): a backlog, or one upload, that takes longer than ``timeout`` in all still
        reaches a store that takes it, so the end of a run and a catch-up do not stop halfway."""
        with self._changed:
            started = moved = self._looked_at = time.monotonic()
            self._position = upload_position()
            while self.pending:
                if self._upload_moved(every=min(0.5, timeout / 3)):
                    moved = time.monotonic()
                    self._said_uploading(started, timeout)
                moved = max(moved, self._delivered_at)
                left = moved + timeout - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(timeout=min(1.0, left))
            return True

    def _upload_moved(self, every: float) -> bool:
        """Whether an upload of the record in flight moved since the last look (one look ``every`` seconds at most:
        it reads ``/proc``). Once that record has failed an attempt it no longer counts: a store that takes the
        bytes and then fails (a full disk, a proxy's 413) is sent the file again and again, and would hold the end
        of the run for ever."""
        now = time.monotonic()
        if now - self._looked_at < every:
            return False
        position, self._position, self._looked_at = self._position, upload_position(), now
        return position != self._position and self._failed != self.sent

    def _said_uploading(self, started: float, timeout: float) -> None:
        """Once a wait runs past ``timeout`` on an upload that moves: why the end of the run is still waiting."""
        if not self._uploading_said and time.monotonic() - started > timeout and self.pending:
            self._uploading_said = True
            record = self.records[self.sent]
            what = record.get("path") or record.get("folder") or f"a {record['op']} record"
            log.info("%s is still being sent to the MLflow store; the end waits while the upload moves", what)

    def _send_forever(self) -> None:
        pause = self.retry_seconds
        while True:
            with self._changed:
                while not self.pending:
                    if self._closing:
                        return
                    self._changed.wait()
                record = self.records[self.sent]
            try:
                self.deliver(record, self.sent < self.first_new)
            except Exception as error:  # (whatever the store raised: keep the record, retry)
                if permanent(error):
                    log.error(
                        "MLflow refused a %s record for good (%s); it is skipped", record.get("op"), first_line(error)
                    )
                else:
                    self._failed = self.sent
                    self._behind(error)
                    time.sleep(pause)
                    pause = min(60.0, pause * 2)
                    continue
            pause = self.retry_seconds
            self._count_one()

    def _count_one(self) -> None:
        with self._changed:
            self.sent += 1
            self._delivered_at = time.monotonic()
            self._write_counter()
            if self.behind_since is not None and not self.pending:
                log.warning(
                    "tracking caught up after %.0f s: every record is in the store",
                    time.monotonic() - self.behind_since,
                )
                self.behind_since = None
            self._changed.notify_all()

    def _write_counter(self) -> None:
        with replaced_file(self.counter) as out:
            out.write(str(self.sent))

    def _behind(self, error: Exception) -> None:
        if self.behind_since is None:
            self.behind_since = time.monotonic()
            log.warning(
                "tracking is behind: the MLflow store does not answer (%s). Training goes on; %d record(s) wait "
                "in %s and are sent when it answers again (at the latest on resume)",
                first_line(error),
                self.pending,
                self.journal,
            )


def counted_journal(folder: Path) -> tuple[list[dict], list[int], int]:
    """A journal folder's records, its unreadable lines, and how many records it counts as delivered (an unreadable
    count is more than there are: the journal is doubted)."""
    records, unreadable = read_journal(folder / "journal.jsonl")
    counter = folder / "sent"
    counted = counter.read_text().strip() if counter.exists() else "0"
    return records, unreadable, int(counted) if counted.isdigit() else len(records) + 1


JOURNAL_NAME = re.compile(r"\d+-[0-9a-f]{6}")  # a process's journal folder in a shared .tracking (own_journal)


def own_journal(root: Path) -> Path:
    """This process's journal folder in a ``.tracking`` that several processes share (``<pid>-<hex>``), locked by it
    until it ends. It is made under a hidden name and locked before it is named, so another process never takes a
    folder whose owner has not locked it yet for one that ended. Absolute: the files its records name are found
    by a process started elsewhere (a continued sweep names its folder absolutely)."""
    name = f"{os.getpid()}-{secrets.token_hex(3)}"
    making = root.absolute() / f".{name}"
    making.mkdir(parents=True)
    take(making / ".lock", f"{making}: another process's journal")
    os.rename(making, making.with_name(name))  # the lock stays held: it is on the file, wherever its folder is named
    return making.with_name(name)


def adopt_ended(root: Path, own: Path) -> None:
    """What processes that ended left undelivered in a shared ``.tracking`` (:func:`ended_journals`) becomes the
    start of ``own``'s journal, delivered as left by an earlier process. Each ended folder is then moved into
    ``own/adopted/``, with the files its records name (staged masked files); a kill before that move has them
    adopted twice, which the delivery tolerates (see the module docstring)."""
    ended = ended_journals(root, own)
    if not ended:
        return
    records = []
    for folder in ended:
        left, unreadable, sent = counted_journal(folder)
        left = left if unreadable or sent > len(left) else left[sent:]
        records += left if folder == root else [_moved(r, folder, own / "adopted" / folder.name) for r in left]
    with replaced_file(own / "journal.jsonl") as out:
        out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    for folder in ended:
        if folder == root:
            for name in ("journal.jsonl", "sent"):
                (root / name).unlink(missing_ok=True)
        else:
            (own / "adopted").mkdir(exist_ok=True)
            os.rename(folder, own / "adopted" / folder.name)
            let_go(folder / ".lock")
    log.info("%s: delivering %d tracking record(s) that %d ended process(es) left", own, len(records), len(ended))


def ended_journals(root: Path, own: Path) -> list[Path]:
    """The journal folders in ``root`` whose process ended (their lock is free; this process's other outboxes
    hold theirs on descriptors of their own, so they count as taken), oldest first, after the one journal a version
    before shared folders kept in ``root`` itself. Each is held (locked) by this process from here on."""
    ended = [root] if (root / "journal.jsonl").exists() else []
    for folder in sorted(root.iterdir(), key=_journal_time):
        if folder.name == own.name or not (folder.is_dir() and JOURNAL_NAME.fullmatch(folder.name)):
            continue
        try:
            take(folder / ".lock", "")
        except InUse:  # a process that runs: its records are its own
            continue
        if (folder / "journal.jsonl").exists():
            ended.append(folder)
        else:  # it journaled nothing, or another process took it over meanwhile (the lock made it anew)
            shutil.rmtree(folder, ignore_errors=True)
            let_go(folder / ".lock")
    return ended


def _journal_time(folder: Path) -> float:
    try:
        return (folder / "journal.jsonl").stat().st_mtime
    except OSError:  # none yet, or moved by another process meanwhile
        return 0.0


def _moved(record: dict, old: Path, new: Path) -> dict:
    """``record`` with a file it names under ``old`` (absolutely, or relative to where its process started) named
    under ``new``."""
    old_text = str(old.absolute()) + os.sep

    def moved(value):
        if isinstance(value, str) and os.path.abspath(value).startswith(old_text):
            return str(new) + os.sep + os.path.abspath(value)[len(old_text) :]
        return value

    return {key: moved(value) for key, value in record.items()}


def read_journal(path: Path) -> tuple[list[dict], list[int]]:
    """The journal's records and the numbers of the lines that cannot be read. A last line cut short by a kill
    (no newline after it) was never acknowledged: it is cut off the file, so later records start a line."""
    if not path.exists():
        return [], []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with open(path, "r+b") as journal:
            journal.truncate(complete)
    records, unreadable = [], []
    for number, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            record = None
        if isinstance(record, dict) and "op" in record:
            records.append(record)
        else:
            unreadable.append(number)
    return records, unreadable


def permanent(error: Exception) -> bool:
    """A refusal that retrying cannot change (a bad request, a deleted run), as opposed to an unreachable store."""
    status = getattr(error, "get_http_status_code", lambda: None)()
    return status in (400, 404)


def _aside(journal: Path) -> Path:
    """Where a damaged journal is kept: ``journal.damaged.jsonl``, or ``.2``, ``.3``... beside an earlier damage's."""
    for n in itertools.count(1):
        kept = journal.with_name(f"journal.damaged{'' if n == 1 else f'.{n}'}.jsonl")
        if not kept.exists():
            return kept
