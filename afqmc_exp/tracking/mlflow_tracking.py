"""The ``tracking`` config group: one MLflow run per training run.

* Store: ``tracking.uri`` (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``, the same default for
  training, ``evaluate``/``predict`` and the report); how it is found, reached, locked and checked is
  ``store``'s, the one owner of the MLflow store.
* Training never waits for the store: the run is created synchronously (it needs an id), and every later
  write goes through the run's outbox (see ``mlflow_run``). A store that is locked or down is then one
  line from the outbox ("tracking is behind", "caught up").
* Secrets: the params it is given are masked already (``run_tracking.flatten``); config files are uploaded as
  masked copies (``log_masked_artifacts``); see ``masking``. What a run is named and tagged is ``run_tracking``'s.
* The runs table: MLflow's UI opens an experiment with its own default columns (none of them a metric) and keeps a
  user's choice in their browser only. A *shared view* is the one setting the server keeps: an experiment tag
  ``mlflow.sharedViewState.<key>`` that the page ``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens with
  (MLflow 3.15+; the page offers to keep it as the user's own view). Each run sets the view ``afqmc`` on its
  experiment (``RUNS_VIEW``): the best dev value of its metric (sorted best first), the dev loss of the best
  weights, the model, the task, lr, batch and seed; the last line of a run this process started links it
  (``runs_view_link``; a resumed one's does not).
* The client API (not the fluent ``mlflow.start_run``) is used so that several runs in one process
  (a multirun with the basic launcher) never share hidden global state. ``mlflow`` itself is imported
  only when a run starts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import store
from .masking import Masker, mask_uri
from .mlflow_run import NoRun, Run
from .store import default_uri, first_line

log = logging.getLogger(__name__)

RUNS_VIEW = "afqmc"  # the runs table's shared view on every experiment a run records in (see the docstring)
VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW}"


def runs_view_state(metric: str) -> str:
    """The view's state as MLflow's UI reads it: its columns (``<type>.`<name>```) and its order."""
    import json

    from ..metrics import GREATER_IS_BETTER

    best = f"metrics.`best/dev_{metric}`"
    columns = [
        best,
        "metrics.`final/dev_loss`",
        "tags.`model`",
        "tags.`task`",
        "params.`optim.lr`",
        "params.`data.batch_size`",
        "params.`seed`",
    ]  # no Dataset: its wide column hides these at 1600 px
    return json.dumps({"selectedColumns": columns, "orderByKey": best, "orderByAsc": not GREATER_IS_BETTER[metric]})


def set_runs_view(client, experiment_id: str, metric: str) -> None:
    """The experiment's view ``afqmc`` (see the module docstring); a store that refuses it costs the run nothing."""
    try:
        client.set_experiment_tag(experiment_id, VIEW_TAG, runs_view_state(metric))
    except Exception as error:  # (whatever the store raised: the run goes on, said in one line)
        log.warning("the runs table's view was not set on experiment %s (%s)", experiment_id, first_line(error))


def runs_view_link(browse_at: str, experiment_id: str) -> str:
    """The page of the view on an experiment, at the UI ``browse_at`` (a server's credentials left out)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(browse_at.rstrip("/"))
    ui = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return f"{ui}/#/experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW}"


class TrackingUnavailable(RuntimeError):
    """The store cannot be reached or written when a run must be created; one line says which and why."""


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
        shared: bool = False,
    ) -> Run:
        """Create the run (synchronously: it needs an id) and queue its params and tags. ``shared``: several
        processes log it from ``folder`` (a sweep's parent; see ``outbox.own_journal``)."""
        if not self.enabled:
            return NoRun()
        try:
            client = self.client()  # builds (and, for a new SQLite file, migrates) the store, under the lock
            experiment_id = self.experiment_id(client)
            run_tags = {**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
            created = client.create_run(experiment_id, run_name=self.run_name, tags=run_tags)
        except store.StoreUnreachable as down:
            raise TrackingUnavailable(f"tracking.uri={down} (tracking.enabled=false runs without MLflow)") from None
        except Exception as error:  # (whatever the store raised, said in one line)
            raise TrackingUnavailable(
                f"tracking.uri={mask_uri(self.uri)}: cannot create the MLflow run ({first_line(error)}); start the "
                "store or point tracking.uri elsewhere (tracking.enabled=false runs without MLflow)"
            ) from None
        run = Run(client, created.info.run_id, folder, self.flush_every, masker=masker,
                  drain_seconds=self.drain_seconds, shared=shared)  # fmt: skip
        run.experiment_id = experiment_id
        run.name = created.info.run_name
        if "metric" in tags:  # a training run (a sweep's parent has none): the runs table's view, its metric's
            set_runs_view(client, experiment_id, tags["metric"])
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

    def experiment_id(self, client) -> str:
        from mlflow import MlflowException

        with store.store_lock(self.uri):
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is not None:
                return experiment.experiment_id
            try:
                return client.create_experiment(self.experiment)
            except MlflowException:  # another process created it between our two calls
                return client.get_experiment_by_name(self.experiment).experiment_id

    def client(self, asked: bool = True):
        """The store's client; ``asked=False`` for a run that goes on whether or not the store answers now."""
        return store.client(self.uri, asked=asked)

    def attach(self, run_id: str, folder: Path, masker: Masker | None = None, shared: bool = False) -> Run:
        """An earlier run over its folder's outbox, knowing what it has logged (the journal's steps, and the
        store's where the journal is doubted or was never kept) and its tags; nothing is written yet."""
        if not self.enabled:
            return NoRun()
        run = Run(self.client(asked=False), run_id, folder, self.flush_every, masker=masker,
                  drain_seconds=self.drain_seconds, shared=shared)  # fmt: skip
        journaled = run.journal_steps()
        if run.outbox.doubted or not journaled:
            stored = run.store_steps()
            journaled = {k: max(journaled.get(k, -1), stored.get(k, -1)) for k in {*journaled, *stored}}
        run.logged_through, run.tags = journaled, run.journal_tags()
        return run

    def reopen(self, run_id: str, folder: Path, masker: Masker | None = None, shared: bool = False) -> Run:
        """Log into an earlier run again (resuming): what the earlier process left in the outbox is sent first,
        the run is marked RUNNING, and steps already logged are not logged again."""
        run = self.attach(run_id, folder, masker, shared)
        if run.active:
            run.outbox.put({"op": "status", "status": "RUNNING"})
            log.info("MLflow run %s reopened (metrics logged through step %s)", run_id,
                     max(run.logged_through.values(), default=None))  # fmt: skip
        return run
