"""The ``tracking`` config group: one MLflow run per training run.

* Store: ``tracking.uri`` (default ``default_uri()``: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``;
  the same default for training, ``evaluate``/``predict`` and the report). A relative SQLite path is
  resolved against the directory the user started in, so ``mlflow ui`` run there sees every run.
  SQLite, not the plain file store: MLflow 3 refuses ``./mlruns`` without an opt-in, the UI reads
  SQLite directly, and several processes can write to it at once. Creating a new SQLite store
  runs a schema migration that crashes when two processes do it at the same moment, so the first
  contact with a SQLite store is serialised by a file lock beside the database. ``store_problems``
  checks a store before anything runs (a misspelt scheme, a folder that cannot be written, a damaged
  SQLite file), so a bad one costs one line.
* Training never waits for the store: the run is created synchronously (it needs an id), and every later
  write goes through the run's outbox (see ``tracked_run``). A store that is locked or down is then one
  line from the outbox ("tracking is behind", "caught up"); MLflow's own ERROR line with two SQLAlchemy
  tracebacks for each failed call (``mlflow.store.db.utils``) is dropped, as the error reaches the caller
  anyway.
* Secrets: params come from ``flatten`` (secret-looking keys and passwords inside URIs masked); config
  files are uploaded as masked copies (``log_masked_artifacts``); see ``masking``.
* The client API (not the fluent ``mlflow.start_run``) is used so that several runs in one process
  (a multirun with the basic launcher) never share hidden global state. ``mlflow`` itself is imported
  only when a run starts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .masking import MASK, SECRET_KEY, Masker, mask_uri
from .outbox import first_line
from .tracked_run import Run

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
BUSY_WAIT_S = 300.0  # how long a run waits for a SQLite store another process holds locked
DEFAULT_STORE = "sqlite:///mlflow.db"  # where the command runs (see resolve_uri)
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


class TrackingUnavailable(RuntimeError):
    """The store cannot be reached or written when a run must be created; one line says which and why."""


def default_uri() -> str:
    """The store every command uses unless told otherwise: ``MLFLOW_TRACKING_URI``, else ``DEFAULT_STORE``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE


def resolve_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` (or a bare path, MLflow's file store) absolute against the current
    directory, so every process of a run, and ``mlflow ui`` started there, mean the same file."""
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
            return [f"tracking.uri={shown}: {path} stayed locked by another process for {BUSY_WAIT_S:.0f} s; "
                    "try again when it is done (the store is not damaged)"]  # fmt: skip
        if verdict != "ok":
            return [f"tracking.uri={shown}: {path} is damaged ({verdict}); move it aside to start a new store"]
    return []


def _sqlite_verdict(path: Path, shown: str) -> str:
    """SQLite's own check of the file: "ok", what is damaged, or "busy" when another process held its lock for
    ``BUSY_WAIT_S`` (a healthy store that is busy is waited for, said once, never called damaged)."""
    waited, said = 0.0, False
    while True:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as db:
                return db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                return str(error)
        except sqlite3.DatabaseError as error:
            return str(error)
        if not said:
            log.warning("tracking.uri=%s: the store is busy (another process holds its lock); waiting", shown)
            said = True
        waited += 1.0
        if waited >= BUSY_WAIT_S:
            return "busy"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"optim.lr": "2e-05", "data.test_file": "null", ...}``: values written as in the YAML
    (null, true), Hydra's plumbing (``_target_``, ``_partial_``) left out, secret-looking keys masked."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if str(key).startswith("_"):
            continue
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        elif SECRET_KEY.search(str(key)) and value not in (None, ""):
            flat[name] = MASK
        else:  # credentials inside a URI (postgresql://user:password@host) are masked too
            flat[name] = mask_uri(yaml_text(value))[:MAX_PARAM_CHARS]
    return flat


def yaml_text(value: Any) -> str:
    """A config value as YAML writes it (``null``, ``true``), not as Python does (``None``, ``True``)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    return str(value)


def context_tags(source_dir: Path) -> dict[str, str]:
    """MLflow's standard tags (who ran what, from where: ``mlflow.user``, ``mlflow.source.name``/``.type``,
    ``mlflow.source.git.commit``), so the UI's Source and User columns say something, plus our git state."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = resolve_tags({})
    git = git_state(source_dir)
    if git:
        tags.setdefault("mlflow.source.git.commit", git["git.commit"])
    return {**tags, **git}


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, str]:
    """The commit and whether the tree has uncommitted changes; empty outside a git checkout."""
    try:
        git = {"cwd": cwd, "capture_output": True, "text": True, "timeout": 5, "check": True}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **git).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


@dataclass
class MlflowTracking:
    """Settings of the ``tracking`` group; :meth:`start` opens the run."""

    uri: str = field(default_factory=default_uri)
    experiment: str = "afqmc"
    run_name: str | None = None
    enabled: bool = True  # false: no MLflow at all (e.g. quick debugging)
    flush_every: int = 1000  # buffered metric values before a write (evaluations and checkpoints flush too)
    log_weights: bool = True  # upload the best weights folder as artifacts (a second copy of the weights)
    register_as: str | None = None  # register the best model in the Model Registry under this name (a new version)
    log_model: bool = False  # also log a model to serve (pyfunc: text/text_pair in, afqmc-predict's answers out)
    drain_seconds: float = 60.0  # at the end, how long to wait for a store that does not answer (then: on resume)
    system_metrics_seconds: float | None = 10.0  # system/* metrics every N seconds (null: none)

    def start(
        self,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        folder: Path,
        parent_run_id: str | None = None,
        masker: Masker | None = None,
    ) -> Run:
        """Create the run (synchronously: it needs an id) and queue its params and tags."""
        if not self.enabled:
            return Run(None, None)
        try:
            client = self.client()  # builds (and, for a new SQLite file, migrates) the store, under the lock
            experiment_id = self._experiment_id(client)
            run_tags = {**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
            created = client.create_run(experiment_id, run_name=self.run_name, tags=run_tags)
        except Exception as error:  # noqa: BLE001  (whatever the store raised, said in one line)
            raise TrackingUnavailable(
                f"tracking.uri={mask_uri(self.uri)}: cannot create the MLflow run ({first_line(error)}); start the "
                "store or point tracking.uri elsewhere (tracking.enabled=false runs without MLflow)"
            ) from None
        run = Run(
            client, created.info.run_id, folder, self.flush_every, masker=masker, drain_seconds=self.drain_seconds
        )
        run.set_tags(run_tags)  # in the journal too: a resumed process reads them back (journal_tags)
        run.log_params(params)
        log.info(
            "MLflow run %s (%s) in %s, experiment %r",
            created.info.run_name,
            created.info.run_id,
            mask_uri(client.tracking_uri),
            self.experiment,
        )
        return run

    def _experiment_id(self, client) -> str:
        from mlflow import MlflowException

        with _store_lock(resolve_uri(self.uri)):
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is not None:
                return experiment.experiment_id
            try:
                return client.create_experiment(self.experiment)
            except MlflowException:  # another process created it between our two calls
                return client.get_experiment_by_name(self.experiment).experiment_id

    def client(self):
        from mlflow import MlflowClient

        logging.getLogger("mlflow.store.db.utils").addFilter(_raised_anyway)

        # MLflow would print the run's URL straight to stdout when a run ends, credentials included; the run
        # logs its own masked link instead (Run.end)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no upload bars in the log
        uri = resolve_uri(self.uri)
        with _store_lock(uri):  # the registry named too: never a process-wide default left by another store
            return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def attach(self, run_id: str, folder: Path, masker: Masker | None = None) -> Run:
        """An earlier run over its folder's outbox, knowing what it has logged (the journal's steps, and the
        store's where the journal is doubted or was never kept) and its tags; nothing is written yet."""
        if not self.enabled:
            return Run(None, None)
        run = Run(self.client(), run_id, folder, self.flush_every, masker=masker, drain_seconds=self.drain_seconds)
        journaled = run.journal_steps()
        if run.outbox.doubted or not journaled:
            stored = run.store_steps()
            journaled = {k: max(journaled.get(k, -1), stored.get(k, -1)) for k in {*journaled, *stored}}
        run.logged_through, run.tags = journaled, run.journal_tags()
        return run

    def reopen(self, run_id: str, folder: Path, masker: Masker | None = None) -> Run:
        """Log into an earlier run again (resuming): what the earlier process left in the outbox is sent first,
        the run is marked RUNNING, and steps already logged are not logged again."""
        run = self.attach(run_id, folder, masker)
        if run.active:
            run.outbox.put({"op": "status", "status": "RUNNING"})
            log.info("MLflow run %s reopened (metrics logged through step %s)", run_id,
                     max(run.logged_through.values(), default=None))  # fmt: skip
        return run


def _raised_anyway(record: logging.LogRecord) -> bool:
    """Keep MLflow's store log lines except its report of a database error it then raises to its caller."""
    return not record.getMessage().startswith("SQLAlchemy database error")


class _store_lock:
    """Exclusive lock around first contact with a SQLite store (see module docstring); no-op otherwise."""

    def __init__(self, uri: str):
        self.path = uri[len("sqlite:///") :] + ".lock" if uri.startswith("sqlite:///") else None

    def __enter__(self):
        if self.path:
            from filelock import FileLock

            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.lock = FileLock(self.path, timeout=300)
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        if self.path:
            self.lock.release()
