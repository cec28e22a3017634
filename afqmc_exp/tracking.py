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
  write goes through an :class:`~afqmc_exp.outbox.Outbox` in the run folder, delivered by a background
  thread and kept on disk while the store does not answer. Metrics are buffered and written in batches
  (``log_batch``, at most 1000 per call, as the API allows) at every evaluation, before every
  checkpoint, when the buffer fills and at the end. A reopened (resumed) run drops values for steps it
  has already logged: the trainer recomputes exactly those steps after a kill that fell between a
  flush and its checkpoint, so every step is logged once.
* Secrets: params come from ``flatten`` (secret-looking keys and passwords inside URIs masked); config
  files are uploaded as masked copies (``log_masked_artifacts``); see ``masking``.
* The client API (not the fluent ``mlflow.start_run``) is used so that several runs in one process
  (a multirun with the basic launcher) never share hidden global state. ``mlflow`` itself is imported
  only when a run starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .masking import MASK, SECRET_KEY, Masker, mask_uri
from .outbox import Outbox, first_line

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
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
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as error:
            verdict = str(error)
        if verdict != "ok":
            return [f"tracking.uri={shown}: {path} is damaged ({verdict}); move it aside to start a new store"]
    return []


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
    log_model: bool = False  # also log it as an mlflow.transformers model (pyfunc: scores text/text_pair pairs)
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

        # MLflow would print the run's URL straight to stdout when a run ends, credentials included; the run
        # logs its own masked link instead (Run.end)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no upload bars in the log
        uri = resolve_uri(self.uri)
        with _store_lock(uri):  # the registry named too: never a process-wide default left by another store
            return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def reopen(self, run_id: str, folder: Path, masker: Masker | None = None) -> Run:
        """Log into an earlier run again (resuming): what the earlier process left in the outbox is sent first,
        the run is marked RUNNING, and steps already logged are not logged again."""
        if not self.enabled:
            return Run(None, None)
        run = Run(self.client(), run_id, folder, self.flush_every, masker=masker, drain_seconds=self.drain_seconds)
        run.logged_through = run.journal_steps() or run.store_steps()
        run.tags = run.journal_tags()
        run.outbox.put({"op": "status", "status": "RUNNING"})
        log.info(
            "MLflow run %s reopened (metrics logged through step %s)",
            run_id,
            max(run.logged_through.values(), default=None),
        )
        return run

    def catch_up(self, run_id: str, folder: Path) -> int:
        """Deliver what a finished run's outbox still holds; return how many records are still pending."""
        if not self.enabled:
            return 0
        run = Run(self.client(), run_id, folder, drain_seconds=self.drain_seconds)
        run.outbox.start()
        run.outbox.drain(self.drain_seconds)
        return run.outbox.pending


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


class Run:
    """An open MLflow run (or a no-op stand-in when tracking is disabled or on non-main processes).

    Writes are queued in the outbox in ``folder`` (see the module docstring); ``client`` is for reads."""

    def __init__(
        self,
        client,
        run_id: str | None,
        folder: Path | None = None,
        flush_every: int = 1000,
        masker: Masker | None = None,
        drain_seconds: float = 60.0,
    ):
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self.folder, self.masker, self.drain_seconds = folder, masker or Masker(), drain_seconds
        self.logged_through: dict[str, int] = {}  # key -> last step already logged (a resumed run)
        self._metrics: list = []
        self._buffer_lock = threading.Lock()  # the system-metrics sampler logs from its own thread
        self.tags: dict[str, str] = {}  # every tag this run has set, the last value of each
        self.outbox = Outbox(folder, self._deliver) if client is not None else None
        self._store_through: dict[str, int] | None = None  # filled when replaying a backlog (see _deliver)

    @property
    def active(self) -> bool:
        return self.client is not None

    # ------------------------------------------------------------------------------------ queued writes
    def log_params(self, params: Mapping[str, str]) -> None:
        if self.active:
            self.outbox.put({"op": "params", "params": dict(params)})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.active:
            tags = {k: str(v)[:5000] for k, v in tags.items()}
            self.tags.update(tags)
            self.outbox.put({"op": "tags", "tags": tags})

    def log_metrics(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Buffer metric values (None values are skipped); written in batches, see module docstring."""
        if not self.active:
            return
        now = int(time.time() * 1000)
        values = [[k, float(v), now, step] for k, v in metrics.items()
                  if v is not None and step > self.logged_through.get(k, -1)]  # fmt: skip
        with self._buffer_lock:
            self._metrics += values
            full = len(self._metrics) >= self.flush_every
        if full:
            self.flush()

    def flush(self) -> None:
        if not self.active:
            return
        with self._buffer_lock:
            pending, self._metrics = self._metrics, []
        if pending:
            self.outbox.put({"op": "metrics", "metrics": pending})

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.active and Path(local_dir).exists():
            self.outbox.put({"op": "artifacts", "path": str(local_dir), "artifact_path": artifact_path})

    def log_datasets(self, datasets: list[dict]) -> None:
        """Data files as dataset inputs (``{"name", "path", "digest", "rows", "context"}``): the runs table's
        Dataset column names them, and the digest tells apart two runs on different data."""
        if self.active:
            self.outbox.put({"op": "inputs", "datasets": datasets})

    def log_table(self, jsonl: Path, artifact_file: str) -> None:
        """A JSON-lines file as an MLflow table: sortable and filterable in the UI."""
        if self.active and Path(jsonl).exists():
            self.outbox.put({"op": "table", "path": str(jsonl), "artifact_file": artifact_file})

    def log_artifact(self, local_file: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.active and Path(local_file).exists():
            self.outbox.put({"op": "artifact", "path": str(local_file), "artifact_path": artifact_path})

    def log_masked_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """Text files (config) with the run's secrets masked: copies staged in the outbox folder are uploaded."""
        if not (self.active and Path(local_dir).exists()):
            return
        staged = self.outbox.folder / "masked" / artifact_path
        staged.mkdir(parents=True, exist_ok=True)
        for item in Path(local_dir).iterdir():
            if item.is_file():
                (staged / item.name).write_text(self.masker(item.read_text(encoding="utf-8")), encoding="utf-8")
        self.log_artifacts(staged, artifact_path)

    def log_masked_file(self, path: Path, artifact_path: str | None = None) -> None:
        """One text file with the run's secrets masked (a staged copy is uploaded)."""
        if not (self.active and Path(path).exists()):
            return
        staged = self.outbox.folder / "masked" / Path(path).name
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(self.masker(Path(path).read_text(encoding="utf-8")), encoding="utf-8")
        self.log_artifact(staged, artifact_path)

    def register(self, name: str, artifact_path: str) -> None:
        """A new version of registered model ``name`` whose source is this run's ``artifact_path``;
        ``models:/NAME/VERSION`` then downloads that folder (predict.py and evaluate.py take it)."""
        if self.active:
            self.outbox.put({"op": "register", "name": name, "artifact_path": artifact_path})

    def log_transformers_model(self, folder: str | os.PathLike, register_as: str | None = None) -> None:
        """The saved classifier as an ``mlflow.transformers`` text-classification model (see ``_log_flavour``)."""
        if self.active:
            self.outbox.put({"op": "transformers_model", "folder": str(folder), "register_as": register_as})

    def end(self, status: str = "FINISHED") -> None:
        """Flush what is buffered, close the run as FINISHED, FAILED or KILLED, and wait (a bounded time) for
        the outbox to be delivered."""
        if not self.active:
            return
        self.flush()
        self.outbox.put({"op": "end", "status": status})
        self.outbox.close()
        if self.outbox.drain(self.drain_seconds):
            self._log_link()
        else:
            log.warning(
                "tracking is behind: %d record(s) for MLflow run %s wait in %s; they are sent when the store "
                "answers: python train.py resume=%s",
                self.outbox.pending,
                self.run_id,
                self.outbox.journal,
                self.folder,
            )

    def _log_link(self) -> None:
        """Where to see the run, for a server store (credentials masked)."""
        uri = self.client.tracking_uri
        if uri.startswith(("http://", "https://")):
            with contextlib.suppress(Exception):
                experiment_id = self.client.get_run(self.run_id).info.experiment_id
                log.info(
                    "MLflow run: %s/#/experiments/%s/runs/%s", mask_uri(uri.rstrip("/")), experiment_id, self.run_id
                )

    # ------------------------------------------------------------------------------------ reads
    def journal_steps(self) -> dict[str, int]:
        """Per metric, the last step this run's journal holds (everything it ever logged)."""
        through: dict[str, int] = {}
        for record in self.outbox.records:
            for key, _, _, step in record.get("metrics", []):
                through[key] = max(step, through.get(key, -1))
        return through

    def journal_tags(self) -> dict[str, str]:
        """The tags this run's journal set, the last value of each."""
        tags: dict[str, str] = {}
        for record in self.outbox.records:
            tags.update(record.get("tags", {}))
        return tags

    def store_steps(self) -> dict[str, int]:
        """Per metric, the last step the store holds (for runs logged before the journal existed)."""
        try:
            keys = self.client.get_run(self.run_id).data.metrics
            return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in keys}
        except Exception as error:  # noqa: BLE001
            log.warning("could not read the logged steps of run %s (%s)", self.run_id, first_line(error))
            return {}

    # ------------------------------------------------------------------------------------ delivery (outbox thread)
    def _deliver(self, record: dict, replayed: bool = False) -> None:
        from mlflow.entities import Metric, Param, RunTag

        op, client, run_id = record["op"], self.client, self.run_id
        if op == "metrics":
            values = record["metrics"]
            if replayed:  # possibly delivered already by a process that died before counting it
                self._store_through = self._store_through if self._store_through is not None else self.store_steps()
                values = [v for v in values if v[3] > self._store_through.get(v[0], -1)]
            for start in range(0, len(values), 1000):
                client.log_batch(run_id, metrics=[Metric(*v) for v in values[start : start + 1000]], synchronous=True)
        elif op in ("params", "tags"):
            kind, items = (Param, record["params"]) if op == "params" else (RunTag, record["tags"])
            entries = [kind(k, v) for k, v in items.items()]
            for start in range(0, len(entries), 100):
                client.log_batch(run_id, **{op: entries[start : start + 100]}, synchronous=True)
        elif op in ("artifact", "artifacts") and Path(record["path"]).exists():
            upload = client.log_artifact if op == "artifact" else client.log_artifacts
            upload(run_id, record["path"], record["artifact_path"])
        elif op == "inputs":
            _log_inputs(client, run_id, record["datasets"])
        elif op == "table" and Path(record["path"]).exists():
            import pandas as pd

            client.log_table(
                run_id, data=pd.read_json(record["path"], lines=True), artifact_file=record["artifact_file"]
            )
        elif op == "register":
            self._register(record["name"], record["artifact_path"])
        elif op == "transformers_model":
            _log_flavour(client.tracking_uri, run_id, record["folder"], record["register_as"])
        elif op == "status":
            client.update_run(run_id, status=record["status"])
        elif op == "end":
            client.set_terminated(run_id, status=record["status"])

    def _register(self, name: str, artifact_path: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:  # it exists already
            pass
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(name, source=source, run_id=self.run_id)
        self.client.set_tag(self.run_id, "registered_model_version", f"{name}/{version.version}")
        log.info("registered %s as models:/%s/%s", artifact_path, name, version.version)


def _log_inputs(client, run_id: str, datasets: list[dict]) -> None:
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    client.log_inputs(run_id, datasets=[
        DatasetInput(
            Dataset(name=d["name"], digest=d["digest"], source_type="local", source=json.dumps({"uri": d["path"]}),
                    profile=json.dumps({"num_rows": d["rows"]})),
            tags=[InputTag("mlflow.data.context", d["context"])],
        ) for d in datasets
    ])  # fmt: skip


def _log_flavour(tracking_uri: str, run_id: str, folder: str, register_as: str | None) -> None:
    """The classifier as an ``mlflow.transformers`` text-classification model, usable without this project:
    ``mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": [...], "text_pair": [...]}))``.
    Requirements are explicit: the flavour's inferred ones pull in torchvision, which need not exist."""
    import accelerate
    import mlflow
    import pandas as pd
    import torch
    import transformers
    from mlflow.models import infer_signature

    pipe = transformers.pipeline("text-classification", model=folder, tokenizer=folder)
    example = pd.DataFrame({"text": ["花呗怎么还款"], "text_pair": ["花呗如何还钱"]})
    signature = infer_signature(example, pd.DataFrame({"label": ["same"], "score": [0.9]}))
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"transformers=={transformers.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"accelerate=={accelerate.__version__}",
    ]
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # the fluent API's store, put back after

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with _use_tracking_uri(tracking_uri):  # registering a logged model looks it up through the fluent API too
        with mlflow.start_run(run_id=run_id):  # the flavour logs into the active run
            info = mlflow.transformers.log_model(pipe, name="model", task="text-classification", signature=signature,
                                                 input_example=example, pip_requirements=requirements)  # fmt: skip
        if register_as:
            with contextlib.suppress(mlflow.exceptions.MlflowException):  # it exists already
                client.create_registered_model(register_as)
            version = client.create_model_version(register_as, info.model_uri, run_id=run_id, model_id=info.model_id)
            client.set_tag(run_id, "registered_model_version", f"{register_as}/{version.version}")
    client.update_run(run_id, status="RUNNING")  # leaving the fluent run ended it; the "end" record closes it
