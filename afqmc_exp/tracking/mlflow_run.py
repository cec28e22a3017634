"""An open MLflow run, as the trainer and the training run (``training/run.py``) write to it.

Training never waits for the store: every write after the run's creation goes through an
:class:`~afqmc_exp.tracking.outbox.Outbox` in the run folder, delivered by a background thread and kept on disk
while the store does not answer. Metrics are buffered and written in batches (``log_batch``, at most 1000
per call, as the API allows) at every evaluation, before every checkpoint, when the buffer fills and at
the end. A reopened (resumed) run drops values for steps it has already logged: the trainer recomputes
exactly those steps after a kill that fell between a flush and its checkpoint, so every step is logged
once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

from ..run_folder import RunFolder
from .masking import Masker, mask_uri
from .outbox import Outbox
from .store import answering, first_line

log = logging.getLogger(__name__)


def dataset_records(task: str, checked: dict) -> list[dict]:
    """A task's checked files (``data.CheckedFile`` by split) as MLflow dataset inputs: name (task/file), path, a
    digest of the bytes, pairs, role. The records travel through the outbox, so they are plain dicts."""
    contexts = {"train": "training", "dev": "validation", "test": "test"}
    return [{"name": f"{task}/{f.path.name}", "path": str(f.path.resolve()), "digest": f.digest[:8],
             "rows": f.stats.pairs, "context": contexts.get(split, "validation")}
            for split, f in checked.items()]  # fmt: skip


class Run:
    """An open MLflow run. Writes are queued in the outbox in ``folder`` (see the module docstring); ``client`` is
    for reads. Where nothing is tracked, :class:`NoRun` stands in."""

    active = True

    def __init__(
        self,
        client,
        run_id: str,
        folder: Path,
        flush_every: int = 1000,
        masker: Masker | None = None,
        drain_seconds: float = 60.0,
        shared: bool = False,
    ):
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self.folder, self.masker, self.drain_seconds = folder, masker or Masker(), drain_seconds
        self.logged_through: dict[str, int] = {}  # key -> last step already logged (a resumed run)
        self._metrics: list = []
        self._buffer_lock = threading.Lock()  # the system-metrics sampler logs from its own thread
        self.tags: dict[str, str] = {}  # every tag this run has set, the last value of each
        self.outbox = Outbox(folder, self._deliver, shared=shared)
        self._store_through: dict[str, int] | None = None  # filled when replaying a backlog (see _deliver)
        self.experiment_id: str | None = None  # known to a run this process created (the summary links its view)
        self.name: str | None = None  # known to a run this process created: the given one, else MLflow's own
        self.completing = False  # True: recording a finish that a killed process left unjournaled (see _put)

    @property
    def ended(self) -> bool:
        """Whether the journal ends the run: its last status record is an end, not a resume's RUNNING."""
        states = [r["op"] for r in self.outbox.records if r["op"] in ("end", "status")]
        return bool(states) and states[-1] == "end"

    def _put(self, record: dict) -> None:
        """Queue one write; while ``completing``, one the journal already holds is not queued again (a register
        or a served model journaled twice would make two versions)."""
        if not (self.completing and record in self.outbox.records):
            self.outbox.put(record)

    # ------------------------------------------------------------------------------------ queued writes
    def log_params(self, params: Mapping[str, str]) -> None:
        self._put({"op": "params", "params": dict(params)})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        tags = {k: str(v)[:5000] for k, v in tags.items()}
        self.tags.update(tags)
        self._put({"op": "tags", "tags": tags})

    def log_metrics(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Buffer metric values (None values are skipped); written in batches, see module docstring."""
        now = int(time.time() * 1000)
        values = [[k, float(v), now, step] for k, v in metrics.items()
                  if v is not None and step > self.logged_through.get(k, -1)]  # fmt: skip
        with self._buffer_lock:
            self._metrics += values
            full = len(self._metrics) >= self.flush_every
        if full:
            self.flush()

    def flush(self) -> None:
        with self._buffer_lock:
            pending, self._metrics = self._metrics, []
        if pending:
            self._put({"op": "metrics", "metrics": pending})

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        if Path(local_dir).exists():
            self._put({"op": "artifacts", "path": str(local_dir), "artifact_path": artifact_path})

    def log_datasets(self, datasets: list[dict]) -> None:
        """Data files as dataset inputs (``dataset_records``): the runs table's Dataset column names them, and the
        digest tells apart two runs on different data."""
        self._put({"op": "inputs", "datasets": datasets})

    def log_table(self, jsonl: Path, artifact_file: str) -> None:
        """A JSON-lines file as an MLflow table: sortable and filterable in the UI."""
        if Path(jsonl).exists():
            self._put({"op": "table", "path": str(jsonl), "artifact_file": artifact_file})

    def log_artifact(self, local_file: str | os.PathLike, artifact_path: str | None = None) -> None:
        if Path(local_file).exists():
            self._put({"op": "artifact", "path": str(local_file), "artifact_path": artifact_path})

    def log_logs(self) -> None:
        """The run folder's log files (``train.log``, a job's SLURM logs), as they are now."""
        for logfile in RunFolder(self.folder).logs():
            self.log_artifact(logfile)

    def log_masked_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """Text files (config) with the run's secrets masked: copies staged in the outbox folder are uploaded."""
        if not Path(local_dir).exists():
            return
        staged = self.outbox.folder / "masked" / artifact_path
        staged.mkdir(parents=True, exist_ok=True)
        for item in Path(local_dir).iterdir():
            if item.is_file():
                (staged / item.name).write_text(self.masker(item.read_text(encoding="utf-8")), encoding="utf-8")
        self.log_artifacts(staged, artifact_path)

    def log_masked_file(self, path: Path, artifact_path: str | None = None) -> None:
        """One text file with the run's secrets masked (a staged copy is uploaded)."""
        if not Path(path).exists():
            return
        staged = self.outbox.folder / "masked" / Path(path).name
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(self.masker(Path(path).read_text(encoding="utf-8")), encoding="utf-8")
        self.log_artifact(staged, artifact_path)

    def register(self, name: str, artifact_path: str) -> None:
        """A new version of registered model ``name`` whose source is this run's ``artifact_path``;
        ``models:/NAME/VERSION`` then downloads that folder (predict.py and evaluate.py take it)."""
        self._put({"op": "register", "name": name, "artifact_path": artifact_path})

    def log_served_model(self, folder: str | os.PathLike, register_as: str | None = None) -> None:
        """The saved classifier as a model to serve, answering as ``afqmc-predict`` (see ``_log_served_model``)."""
        self._put({"op": "served_model", "folder": str(folder), "register_as": register_as})

    def end(self, status: str | None = "FINISHED") -> None:
        """Flush what is buffered, close the run as FINISHED, FAILED or KILLED (None: leave it RUNNING, for
        another process to close), and wait (a bounded time) for the outbox to be delivered."""
        self.flush()
        if status is not None:
            self._put({"op": "end", "status": status})
        self.outbox.close()
        if self.outbox.drain(self.drain_seconds):
            self._log_link()
        else:
            log.warning(
                "tracking is behind: %d record(s) for MLflow run %s wait in %s; they are sent when the store "
                "answers: python train.py %s",
                self.outbox.pending,
                self.run_id,
                self.outbox.journal,
                RunFolder(self.folder).resume_argument,
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
        """Per metric, the last step the store holds (for runs logged before the journal existed). A server that is
        down is said at once (``store.answering``), not after MLflow's minutes of retries: the run goes on."""
        try:
            answering(self.client.tracking_uri)
            return self._read_store_steps()
        except Exception as error:  # (whatever the store raised: the journal's steps are used, said in one line)
            log.warning("could not read the logged steps of run %s (%s)", self.run_id, first_line(error))
            return {}

    def _read_store_steps(self) -> dict[str, int]:
        keys = self.client.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in keys}

    # ------------------------------------------------------------------------------------ delivery (outbox thread)
    def _deliver(self, record: dict, replayed: bool = False) -> None:
        """Send one journaled record to the store through its operation's handler (``DELIVERY``). ``replayed``: it
        comes from an earlier process's journal and may have reached the store already."""
        op = record["op"]
        if op in MODEL_OPS and replayed and self._has_model_tag(op):
            return  # delivered by an earlier process that died before counting it: not a second version
        handler = DELIVERY.get(op)
        if handler is None:  # a journal from a newer afqmc_exp: said, not guessed at
            log.warning("MLflow run %s: a journaled %r record this version cannot send is skipped", self.run_id, op)
            return
        handler(self, record, replayed)

    def _send_metrics(self, record: dict, replayed: bool) -> None:
        from mlflow.entities import Metric

        values = record["metrics"]
        if replayed:  # possibly delivered already by a process that died before counting it (a store that
            # does not answer raises here, and the outbox retries)
            self._store_through = self._store_through if self._store_through is not None else \
                self._read_store_steps()  # fmt: skip
            values = [v for v in values if v[3] > self._store_through.get(v[0], -1)]
        for start in range(0, len(values), 1000):
            self.client.log_batch(self.run_id, metrics=[Metric(*v) for v in values[start : start + 1000]],
                                  synchronous=True)  # fmt: skip

    def _send_params_or_tags(self, record: dict, replayed: bool) -> None:
        from mlflow.entities import Param, RunTag

        op = record["op"]
        kind, items = (Param, record["params"]) if op == "params" else (RunTag, record["tags"])
        entries = [kind(k, v) for k, v in items.items()]
        for start in range(0, len(entries), 100):
            self.client.log_batch(self.run_id, **{op: entries[start : start + 100]}, synchronous=True)

    def _send_artifacts(self, record: dict, replayed: bool) -> None:
        if Path(record["path"]).exists():  # gone since it was journaled (a removed checkpoint): nothing to send
            upload = self.client.log_artifact if record["op"] == "artifact" else self.client.log_artifacts
            upload(self.run_id, record["path"], record["artifact_path"])

    def _send_inputs(self, record: dict, replayed: bool) -> None:
        _log_inputs(self.client, self.run_id, record["datasets"])

    def _send_table(self, record: dict, replayed: bool) -> None:
        if Path(record["path"]).exists():
            self.client.log_table(self.run_id, data=_table(record["path"]), artifact_file=record["artifact_file"])

    def _send_register(self, record: dict, replayed: bool) -> None:
        self._register(record["name"], record["artifact_path"])

    def _send_served_model(self, record: dict, replayed: bool) -> None:
        _log_served_model(self.client, self.run_id, record["folder"], record["register_as"])

    def _send_status(self, record: dict, replayed: bool) -> None:
        self.client.update_run(self.run_id, status=record["status"])

    def _send_end(self, record: dict, replayed: bool) -> None:
        self.client.set_terminated(self.run_id, status=record["status"])

    def _has_model_tag(self, op: str) -> bool:
        """Whether the run already carries the tag delivering ``op`` ends with (see _register, _log_served_model)."""
        tag = "registered_model_version" if op == "register" else "served_model_uri"
        return tag in self.client.get_run(self.run_id).data.tags

    def _register(self, name: str, artifact_path: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:  # it exists already
            pass
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        described = version_description(self.client, self.run_id, self.folder / artifact_path)
        version = self.client.create_model_version(name, source=source, run_id=self.run_id, **described)
        self.client.set_tag(self.run_id, "registered_model_version", f"{name}/{version.version}")
        log.info("registered %s as models:/%s/%s", artifact_path, name, version.version)


MODEL_OPS = ("register", "served_model", "transformers_model")  # each makes a new version: never sent twice
DELIVERY = {  # journaled operation -> how it reaches the store
    "metrics": Run._send_metrics,
    "params": Run._send_params_or_tags,
    "tags": Run._send_params_or_tags,
    "artifact": Run._send_artifacts,
    "artifacts": Run._send_artifacts,
    "inputs": Run._send_inputs,
    "table": Run._send_table,
    "register": Run._send_register,
    "served_model": Run._send_served_model,
    "transformers_model": Run._send_served_model,  # journals written before it was renamed
    "status": Run._send_status,
    "end": Run._send_end,
}


class NoRun:
    """The run where nothing is tracked (``tracking.enabled=false``, or a process other than the main one): it
    takes every write and keeps none, so its callers never ask whether there is a run."""

    active = ended = completing = False
    client = run_id = folder = outbox = name = None

    def __init__(self):
        self.logged_through: dict[str, int] = {}
        self.tags: dict[str, str] = {}

    def _ignore(self, *args, **kwargs) -> None:
        return None

    log_params = set_tags = log_metrics = flush = log_artifacts = log_datasets = log_table = log_artifact = _ignore
    log_masked_artifacts = log_masked_file = register = log_served_model = log_logs = end = _ignore


def _table(jsonl: str):
    """A predictions file as a flat table: each label's probability in its own column (``prob_<label>``)."""
    import pandas as pd

    frame = pd.read_json(jsonl, lines=True, dtype=False)  # labels stay as the data writes them ("0", not 0)
    if "probs" in frame:
        frame = pd.concat([frame.drop(columns="probs"), pd.DataFrame(list(frame["probs"])).add_prefix("prob_")], axis=1)
    return frame


def version_description(client, run_id: str, weights: Path) -> dict:
    """What a registered version says in the registry (its description and tags): the task, the metric and the
    weights' best dev value, the source run, the base model and the training data's digest, read from the weights'
    facts (``weights_facts``) and the run's dataset inputs."""
    from ..weights_facts import read_facts

    facts, run = read_facts(weights), client.get_run(run_id)
    task, metric = facts.get("task", "?"), facts.get("metric", "?")
    value = facts.get(metric)
    train = next((d.dataset.digest for d in run.inputs.dataset_inputs
                  if any(t.key == "mlflow.data.context" and t.value == "training" for t in d.tags)), "")  # fmt: skip
    shown = f"{value:.4f}" if isinstance(value, (int, float)) else ""
    tags = {"task": task, "metric": metric, f"dev_{metric}": shown, "source_run": run_id,
            "base_model": str(facts.get("base_model", "")), "data_digest": train}  # fmt: skip
    base = Path(tags["base_model"]).name or "?"
    description = (f"{task}: dev {metric} {shown or '?'} at step {facts.get('step', '?')}, run {run.info.run_name} "
                   f"({run_id}); base model {base}; training data {train or '?'}")  # fmt: skip
    return {"description": description, "tags": tags}


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


def _log_served_model(client, run_id: str, folder: str, register_as: str | None) -> None:
    """The best weights as a pyfunc model that answers as ``afqmc-predict`` does, logged as code (see
    ``served_model``), registered as ``register_as`` if given; its URIs and the command that serves it are the
    log's last lines. Requirements are explicit: inferred ones would name this project, which the model does
    not need."""
    import mlflow
    import pandas as pd
    import torch
    import transformers
    from mlflow.models import ModelSignature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # the fluent API's store, put back after
    from mlflow.types import ColSpec, Schema

    from .. import answers, weights_facts
    from ..model import quiet_transformers
    from . import served_model
    from .masking import mask_uri

    example = pd.DataFrame({"text": ["花呗怎么还款"], "text_pair": ["花呗如何还钱"]})
    columns = dict.fromkeys(n for pair in served_model.pair_columns(weights_facts.read_facts(folder)) for n in pair)
    signature = ModelSignature(inputs=Schema([ColSpec("string", name, required=False) for name in columns]))
    requirements = [f"mlflow=={mlflow.__version__}", f"transformers=={transformers.__version__}",
                    f"torch=={torch.__version__.split('+')[0]}", "pandas", "numpy"]  # fmt: skip
    tracking_uri = client.tracking_uri
    quiet = warnings.catch_warnings()  # MLflow's advice on type hints: the signature comes from the example
    with _use_tracking_uri(tracking_uri), quiet_transformers(), quiet:  # registering looks it up through the fluent API
        warnings.simplefilter("ignore", UserWarning)
        with mlflow.start_run(run_id=run_id):  # the model is logged into the active run
            info = mlflow.pyfunc.log_model(name="model", python_model=served_model.__file__,
                                           artifacts={"weights": str(folder)}, signature=signature,
                                           code_paths=[answers.__file__, weights_facts.__file__],
                                           input_example=example, pip_requirements=requirements)  # fmt: skip
        served = info.model_uri
        if register_as:
            with contextlib.suppress(mlflow.exceptions.MlflowException):  # it exists already
                client.create_registered_model(register_as)
            version = client.create_model_version(register_as, info.model_uri, run_id=run_id, model_id=info.model_id,
                                                  **version_description(client, run_id, Path(folder)))  # fmt: skip
            client.set_tag(run_id, "registered_model_version", f"{register_as}/{version.version}")
            served = f"models:/{register_as}/{version.version}"
    client.update_run(run_id, status="RUNNING")  # leaving the fluent run ended it; the "end" record closes it
    client.set_tag(run_id, "served_model_uri", served)  # last: a replay of this record finds it and logs no twin
    log.info("logged model %s%s", info.model_uri, f" (registered as {served})" if served != info.model_uri else "")
    log.info("serve it: MLFLOW_TRACKING_URI=%s mlflow models serve -m %s --env-manager local --port 5001",
             shlex.quote(mask_uri(tracking_uri)), shlex.quote(served))  # fmt: skip
