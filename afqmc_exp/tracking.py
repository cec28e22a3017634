"""The ``tracking`` config group: one MLflow run per training run.

* Store: ``tracking.uri`` (default ``default_uri()``: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``;
  the same default for training, ``evaluate``/``predict`` and the report). A relative SQLite path is
  resolved against the directory the user started in, so ``mlflow ui`` run there sees every run.
  SQLite, not the plain file store: MLflow 3 refuses ``./mlruns`` without an opt-in, the UI reads
  SQLite directly, and several processes can write to it at once. Creating a new SQLite store
  runs a schema migration that crashes when two processes do it at the same moment, so the first
  contact with a SQLite store is serialised by a file lock beside the database.
* Speed and resumability: every synchronous MLflow call is a database write or an HTTP request, so
  metrics are buffered and written with ``log_batch`` (at most 1000 per call, as the API allows) just
  before the trainer writes a checkpoint, when the buffer fills and at the end. A reopened (resumed) run drops values
  for steps the store already has: the trainer recomputes exactly those steps after a kill that fell
  between a flush and its checkpoint, so every step is logged once.
  ``mlflow`` itself is imported only when a run starts.
* The client API (not the fluent ``mlflow.start_run``) is used so that several runs in one process
  (a multirun with the basic launcher) never share hidden global state.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SECRET_KEY = re.compile(r"(token|password|passwd|secret|api[_-]?key|credential)", re.IGNORECASE)
URI_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@/\s]+@")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


DEFAULT_STORE = "sqlite:///mlflow.db"  # where the command runs (see resolve_uri)


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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"optim.lr": "2e-05", ...}``, with values of secret-looking keys masked."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        elif SECRET_KEY.search(str(key)) and value not in (None, ""):
            flat[name] = "***"
        else:  # credentials inside a URI (postgresql://user:password@host) are masked too
            flat[name] = URI_PASSWORD.sub(r"\1***@", str(value))[:MAX_PARAM_CHARS]
    return flat


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, str]:
    """The commit and whether the tree has uncommitted changes; empty outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
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
    flush_every: int = 1000  # buffered metric values before a write (checkpoints flush first, normally)
    log_weights: bool = True  # upload the best weights folder as artifacts (a second copy of the weights)
    register_as: str | None = None  # register the best model in the Model Registry under this name (a new version)
    log_model: bool = False  # also log it as an mlflow.transformers model (pyfunc: scores text/text_pair pairs)

    def start(self, params: Mapping[str, str], tags: Mapping[str, str], parent_run_id: str | None = None) -> Run:
        if not self.enabled:
            return Run(None, None, self.flush_every)
        from mlflow import MlflowException

        client = self.client()  # builds (and, for a new SQLite file, migrates) the store, under the lock
        with _store_lock(resolve_uri(self.uri)):
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                try:
                    experiment_id = client.create_experiment(self.experiment)
                except MlflowException:  # another process created it between our two calls
                    experiment_id = client.get_experiment_by_name(self.experiment).experiment_id
            else:
                experiment_id = experiment.experiment_id
        run_tags = dict(tags)
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=self.run_name, tags=run_tags)
        started = Run(client, run.info.run_id, self.flush_every)
        started.log_params(params)
        log.info(
            "MLflow run %s (%s) in %s, experiment %r",
            run.info.run_name,
            run.info.run_id,
            client.tracking_uri,
            self.experiment,
        )
        return started

    def client(self):
        from mlflow import MlflowClient

        uri = resolve_uri(self.uri)
        with _store_lock(uri):
            return MlflowClient(tracking_uri=uri)

    def reopen(self, run_id: str) -> Run:
        """Mark an earlier run RUNNING again and log into it (resuming; its params stay as they were)."""
        if not self.enabled:
            return Run(None, None, self.flush_every)
        client = self.client()
        client.update_run(run_id, status="RUNNING")
        logged = {
            key: max(m.step for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics
        }
        log.info("MLflow run %s reopened (metrics logged through step %s)", run_id, max(logged.values(), default=None))
        return Run(client, run_id, self.flush_every, logged_through=logged)


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
    """An open MLflow run (or a no-op stand-in when tracking is disabled or on non-main processes)."""

    def __init__(
        self, client, run_id: str | None, flush_every: int = 1000, logged_through: Mapping[str, int] | None = None
    ):
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self.logged_through = dict(logged_through or {})  # key -> last step already in the store (resumed run)
        self._metrics: list = []

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_params(self, params: Mapping[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100], synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[start : start + 100], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Buffer metric values (None values are skipped); written in batches, see module docstring."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics.extend(
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and step > self.logged_through.get(k, -1)
        )
        if len(self._metrics) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.active or not self._metrics:
            return
        pending, self._metrics = self._metrics, []
        for start in range(0, len(pending), 1000):
            self.client.log_batch(self.run_id, metrics=pending[start : start + 1000], synchronous=True)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.active and Path(local_dir).exists():
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_file: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.active and Path(local_file).exists():
            self.client.log_artifact(self.run_id, str(local_file), artifact_path)

    def register(self, name: str, artifact_path: str) -> str:
        """A new version of registered model ``name`` whose source is this run's ``artifact_path``;
        ``models:/NAME/VERSION`` then downloads that folder (predict.py and evaluate.py take it)."""
        if not self.active:
            return ""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:  # it exists already
            pass
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(name, source=source, run_id=self.run_id)
        log.info("registered %s as models:/%s/%s", artifact_path, name, version.version)
        return version.version

    def log_transformers_model(self, folder: str | os.PathLike, register_as: str | None = None) -> None:
        """The saved classifier as an ``mlflow.transformers`` text-classification model, usable without this
        project: ``mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": [...], "text_pair": [...]}))``.
        Requirements are explicit: the flavour's inferred ones pull in torchvision, which need not exist."""
        if not self.active:
            return
        import accelerate
        import mlflow
        import pandas as pd
        import torch
        import transformers
        from mlflow.models import infer_signature

        pipe = transformers.pipeline("text-classification", model=str(folder), tokenizer=str(folder))
        example = pd.DataFrame({"text": ["花呗怎么还款"], "text_pair": ["花呗如何还钱"]})
        signature = infer_signature(example, pd.DataFrame({"label": ["same"], "score": [0.9]}))
        requirements = [
            f"mlflow=={mlflow.__version__}",
            f"transformers=={transformers.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
            f"accelerate=={accelerate.__version__}",
        ]
        mlflow.set_tracking_uri(self.client.tracking_uri)
        mlflow.set_registry_uri(self.client.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):  # the flavour logs into the active run
            mlflow.transformers.log_model(
                pipe,
                name="model",
                task="text-classification",
                signature=signature,
                input_example=example,
                pip_requirements=requirements,
                registered_model_name=register_as,
            )
        self.client.update_run(self.run_id, status="RUNNING")  # leaving the block ended it; end() closes it

    def end(self, status: str = "FINISHED") -> None:
        """Flush what is buffered and close the run as FINISHED, FAILED or KILLED."""
        if not self.active:
            return
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status=status)
