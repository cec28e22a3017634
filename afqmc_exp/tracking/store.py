"""The MLflow store: where it is, the one way to reach it, and what is wrong with it.

Every command asks this module, so the default and the meaning of a relative path are one decision:

* :func:`default_uri`: the store when none is given (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``), and
  :func:`resolve_uri`: ``tracking.uri`` (or a command's ``uri=``) as every process means it. A relative SQLite
  path is made absolute against the directory the user started in, so ``mlflow ui`` run there sees every run.
  SQLite, not the plain file store: MLflow 3 refuses ``./mlruns`` without an opt-in, the UI reads SQLite
  directly, and several processes can write to it at once.
* :func:`client`: the one ``MlflowClient`` constructor, with the registry at the same store (never a
  process-wide default left by another store) and under :class:`store_lock`: creating a new SQLite store runs a
  schema migration that crashes when two processes do it at the same moment, so the first contact with a
  SQLite store is serialised by a file lock beside the database (a store this user may only read: without it).
  MLflow's own ERROR line with two SQLAlchemy tracebacks for each failed call (``mlflow.store.db.utils``) is
  dropped, as the error reaches the caller anyway. MLflow keeps one store per URI for the life of a process, with
  the database open; where the SQLite file was deleted or replaced since (a notebook's ``rm mlflow.db``, then a new
  run), it would go on reading and writing the deleted file, and the runs logged after would vanish with it. So a
  SQLite file that is not the one this process's last ``client`` call saw has MLflow's stores for it dropped first
  (:func:`forget_replaced_database`).
* A server store (``http``, ``https``) that must answer now (a new run, a lookup) is asked once, without MLflow's
  retries (:func:`answering`): MLflow retries a server that is down for about four minutes before it raises, so a
  forgotten ``mlflow server`` would cost that much, then a traceback. A resumed run's client asks nothing: its writes
  wait in the outbox until the store is back.
* :func:`store_problems`: a store checked before anything runs (a misspelt scheme, a folder that cannot be
  written, a damaged SQLite file), so a bad one costs one line; a busy one is waited for, never called damaged.

``mlflow`` itself is imported only when a client is built: it takes seconds to import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from pathlib import Path

from .masking import mask_uri

log = logging.getLogger(__name__)

BUSY_WAIT_S = 300.0  # how long a run waits for a SQLite store another process holds locked
DEFAULT_STORE = "sqlite:///mlflow.db"  # in the folder the command runs in (see resolve_uri)
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def default_uri() -> str:
    """The store every command uses unless told otherwise: ``MLFLOW_TRACKING_URI``, else ``DEFAULT_STORE``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE


def resolve_uri(uri: str) -> str:
    """``uri`` with a relative ``sqlite:///file.db`` (or a bare path, MLflow's file store) made absolute against the
    current directory, so every process of a run, and ``mlflow ui`` started there, mean the same file. (The
    Optuna sweeper's storage too: a store's default is the caller's business, not this function's.)"""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def store_problems(uri: str) -> list[str]:
    """What is wrong with a tracking store, found without contacting a server: an unknown or misspelt
    scheme, a SQLite file whose folder cannot be written or which is not a sound database."""
    shown = mask_uri(uri)
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else None
    if scheme is None:
        if uri.split("/")[0].rstrip(":").lower() in SCHEMES or "//" in uri:
            return [
                f"tracking.uri={shown}: not a URI (a missing ':' or '//'?), e.g. http://host:5000 or sqlite:///mlflow.db"
            ]
        return []  # a folder: MLflow's file store
    if scheme not in SCHEMES:
        return [
            f"tracking.uri={shown}: unknown scheme {scheme!r}; use sqlite:///FILE, http(s)://HOST:PORT, postgresql://..."
        ]
    if scheme == "sqlite":
        return _sqlite_problems(Path(resolve_uri(uri)[len("sqlite:///") :]), shown)
    return []


def _sqlite_problems(path: Path, shown: str) -> list[str]:
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("/"))
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return [
            f"tracking.uri={shown}: {path if path.exists() else folder} cannot be written; pick a store you can write"
        ]
    if path.exists() and path.stat().st_size:
        verdict = _sqlite_verdict(path, shown)
        if verdict == "busy":
            return [f"tracking.uri={shown}: {path} stayed locked by another process for {BUSY_WAIT_S:g} s; "
                    "try again when it is done (the store is not damaged)"]  # fmt: skip
        if verdict != "ok":
            return [f"tracking.uri={shown}: {path} is damaged ({verdict}); move it aside to start a new store"]
    return []


def _sqlite_verdict(path: Path, shown: str) -> str:
    """SQLite's own check of the file: "ok", what is damaged, or "busy" when another process held its lock for
    ``BUSY_WAIT_S`` (a healthy store that is busy is waited for, said once, never called damaged). Opened for
    writing (the caller made sure it may be): a kill in the middle of a write leaves a hot journal, which SQLite
    rolls back on the next connection that may write, as MLflow's would; read-only, that looks like damage."""
    deadline, said = time.monotonic() + BUSY_WAIT_S, False
    while True:
        try:
            wait = min(1.0, max(deadline - time.monotonic(), 0.01)) if said else 0.1  # SQLite's wait, per try
            with sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=wait) as db:
                return db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                return str(error)
        except sqlite3.DatabaseError as error:
            return str(error)
        if said and time.monotonic() >= deadline:
            return "busy"
        if not said:  # after a first short try: said at once, then waited for
            log.warning("tracking.uri=%s: the store is busy (another process holds its lock); waiting up to %g s",
                        shown, BUSY_WAIT_S)  # fmt: skip
            said = True


class StoreMissing(FileNotFoundError):
    """A lookup in a SQLite store that does not exist: nothing to find, and none is created to find nothing in."""


class StoreBusy(RuntimeError):
    """The store's lock stayed held by another process for ``BUSY_WAIT_S``; the message says what to do."""


class StoreUnreachable(ConnectionError):
    """A server store that does not answer (see :func:`answering`); the message names it and what to do."""


SERVER_TIMEOUT_S = (10, 60)  # a server store that takes a connection, then answers /health: (connect, read) s


def answering(uri: str) -> None:
    """A server store (``http``, ``https``) answers: one ``GET /health``, without retries, through MLflow's own
    request (its credentials, TLS and proxy settings). Any answer will do (a 404, a 401 too): only a server that
    cannot be reached raises :class:`StoreUnreachable`. Other stores are not asked here. Asked at each call, not
    once a process: a server can go down between a sweep's jobs."""
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=SERVER_TIMEOUT_S,
                     raise_on_status=False)  # fmt: skip
    except MlflowException as error:
        raise StoreUnreachable(f"{mask_uri(uri)}: no MLflow server answers ({_not_reached(error)}); start it (mlflow "
                               "server --backend-store-uri ...) or check the address") from None  # fmt: skip


def _not_reached(error: Exception) -> str:
    """Why a request did not reach the server, in a few words (MLflow's message runs on with urllib3's, URLs with
    their credentials included)."""
    text = str(error).lower()
    for words, why in (("refused", "connection refused"), ("timed out", "no answer in time"),
                       ("name or service not known", "no such host"), ("nodename nor servname", "no such host"),
                       ("name resolution", "no such host"), ("ssl", "a TLS error")):  # fmt: skip
        if words in text:
            return why
    return re.sub(r"//[^/@\s]+@", "//***@", first_line(error))[:200]


def client(uri: str | None = None, create: bool = True, asked: bool = True):
    """The client of the store ``uri`` names (the default store if none), its model registry at the same store.
    ``create=False``: for a lookup (``resume=<run id>``, ``rerun=``, a report), a SQLite file that is not there, or
    holds no MLflow store (the search's ``optuna.db`` given for ``mlflow.db``), raises :class:`StoreMissing` instead
    of a new store (and its lock file) being made where the user stands, or MLflow's tables inside another
    program's database. ``asked``: a server store must answer now (:func:`answering`); False for a run that goes on
    whether or not it does (a resumed run, whose writes the outbox keeps)."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow.store.db.utils").addFilter(_raised_anyway)
    # MLflow would print the run's URL straight to stdout when a run ends, credentials included; the run
    # logs its own masked link instead (Run.end)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no upload bars in the log
    uri = resolve_uri(uri or default_uri())
    if asked:
        answering(uri)
    database = store_lock(uri).database
    if not create and database is not None and not _holds_mlflow(database):
        raise StoreMissing(f"no MLflow store at {database}")
    with store_lock(uri):
        if database is not None:
            forget_replaced_database(database)
        try:
            return MlflowClient(tracking_uri=uri, registry_uri=uri)  # its tracking store made (or reused) now
        finally:
            if database is not None:
                _OPENED[database] = _identity(database)


def _holds_mlflow(database: Path) -> bool:
    """Whether the SQLite file is there and holds MLflow's tables; nothing is created or migrated. Only what is surely
    no store of MLflow's is refused: a store another process holds (locked, or a journal a kill left to roll back)
    goes on to the usual path, which waits for it."""
    if not database.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=0.5)) as db:
            found = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='experiments'").fetchone()
    except sqlite3.OperationalError:  # locked, busy: a store in use
        return True
    except sqlite3.DatabaseError:  # not a database at all
        return False
    return found is not None


_OPENED: dict[Path, tuple[int, int] | None] = {}  # each SQLite file as this process's last ``client`` call saw it


def _identity(database: Path) -> tuple[int, int] | None:
    try:
        found = database.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def forget_replaced_database(database: Path) -> None:
    """Where ``database`` is no longer the file this process's last :func:`client` call saw (deleted, or replaced
    by another), MLflow's stores and connections are dropped, so the next store is made on the file there: the
    connections to that file under any spelling of its URI (the fluent API's own included), and every cached
    store, as MLflow's cache cannot drop one (the others are made again, each checking its schema once more). A
    file only MLflow's fluent API has opened, never ``client``, is not watched."""
    if database not in _OPENED or _OPENED[database] == _identity(database):
        return
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    log.debug("%s was replaced since this process opened it: MLflow's stores of it are dropped", database)
    for registry in (TrackingStoreRegistry, ModelRegistryStoreRegistry):
        registry._get_store_with_resolved_uri.cache_clear()
    target = database.resolve()
    for store in (TrackingStore, RegistryStore):
        for key, engine in list(store._engine_map.items()):
            if engine.url.database and Path(engine.url.database).resolve() == target:
                store._engine_map.pop(key).dispose()
    del _OPENED[database]


class RunNotFound(LookupError):
    """No MLflow run of that id in the store, or no store there; the message is why, in a few words (or empty)."""


def tags_of_run(uri: str, run_id: str) -> dict[str, str]:
    """The tags of the MLflow run ``run_id`` in the store at ``uri``, which a lookup never creates
    (``resume=<run id>``: the run's folder, a sweep's folder)."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri, create=False).get_run(run_id).data.tags
    except (MlflowException, StoreMissing, StoreBusy, StoreUnreachable) as error:
        why = {StoreMissing: " (no store is there)", StoreBusy: f" ({error})", StoreUnreachable: f" ({error})"}.get(
            type(error), ""
        )
        raise RunNotFound(why) from None


def _raised_anyway(record: logging.LogRecord) -> bool:
    """Keep MLflow's store log lines except its report of a database error it then raises to its caller."""
    return not record.getMessage().startswith("SQLAlchemy database error")


class store_lock:
    """Exclusive lock around first contact with a SQLite store (see module docstring); no-op otherwise.

    A store that exists but whose folder this user cannot write (a shared or read-only copy) is read without the
    lock: it needs no migration, and ``evaluate``, ``predict`` and ``afqmc-report`` only read it."""

    def __init__(self, uri: str | None = None):
        uri = resolve_uri(uri or default_uri())
        self.database = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        self.lock = None  # taken by __enter__

    def __enter__(self):
        if self.database is None:
            return self
        from filelock import FileLock, Timeout

        lock = FileLock(f"{self.database}.lock")
        try:
            self.database.parent.mkdir(parents=True, exist_ok=True)
            self._acquire(lock)
        except Timeout:  # an OSError too, but the store is busy, not out of reach: not read behind its lock
            raise StoreBusy(f"{self.database}: its lock ({lock.lock_file}) stayed held by another process for "
                            f"{BUSY_WAIT_S:g} s; try again when that process is done (if none is running, delete "
                            "the lock file)") from None  # fmt: skip
        except OSError:  # no write access beside it (PermissionError, a read-only file system)
            if not self.database.exists():
                raise
            log.debug("%s: read without its lock (this user cannot write beside it)", self.database)
            return self
        self.lock = lock
        return self

    def _acquire(self, lock) -> None:
        """The lock at once, or after saying what is waited for and for how long."""
        from filelock import Timeout

        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("%s: another process holds the MLflow store's lock (%s); waiting up to %g s for it",
                        self.database, lock.lock_file, BUSY_WAIT_S)  # fmt: skip
            lock.acquire(timeout=BUSY_WAIT_S)

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def first_line(error: Exception) -> str:
    """A store's error in one line: MLflow's messages run on with SQLAlchemy tracebacks and server pages."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
