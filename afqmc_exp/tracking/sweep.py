"""One MLflow parent run per sweep, so the UI shows a multirun as one expandable row.

A Hydra callback (registered in ``conf/train.yaml``) opens the parent run when a multirun starts, in the launching
process and before any job: that also creates a new SQLite store before parallel jobs (``hydra/launcher=joblib``)
could race to create it. The parent's id is written into the sweep folder (``sweep_folder``), where every job (in
this process or another) finds it and nests its own run under it (``mlflow.parentRunId``) in the parent's experiment
(a sweep over ``data`` is one row in the experiment of the sweep's own config, not scattered over each task's). A
continued sweep (``--multirun resume=``) reopens the parent its folder names.
Its name says when and what was swept (``sweep 2026-11-26 14:02 · optim.lr×3 seed×3``). When the
sweep ends the parent gets the best child's objective and run id, a description linking it, the report of its jobs
(``comparison``: Markdown, CSV, plots) and the sweep's ``multirun.yaml`` as artifacts; a registered model version
of the best job gets the alias ``champion``; the console's last line names the best job and the report command. The
parent is closed FINISHED, or FAILED if a job failed; when a job raises, Hydra's basic sweeper stops and skips its
end-of-sweep callback, and an ``atexit`` hook closes the parent FAILED instead. The best job is the report's first
row among the jobs that FINISHED (one that failed or was pruned logged evaluations too): the best objective, ties
broken by the lower final dev loss, then the earlier start.

A sweep over ``data.fold`` (with ``data.folds=K``) gives every pair of train+dev one out-of-fold prediction:
the parent pools the jobs' dev predictions into ``oof_predictions.jsonl`` and logs their metrics (``oof/*``),
the threshold that maximises out-of-fold F1 (``oof/threshold``: a clean one, not tuned on the pairs it is
judged on), and the folds' objective as mean and standard deviation (``folds/*``).

An Optuna search has one parent per study, not per command: the same search started by several workers (terminals,
machines, SLURM array tasks) on one storage and one MLflow store finds the study's parent by its tag
(``study_parent``) and nests its trials under it. Each worker's end updates the parent's best job, report and
champion over every worker's trials; the sweeper says whether it left the study complete
(``SweepFolder.study_complete``), and only then is the parent closed: the last worker closes it, the others leave it
RUNNING.
"""

from __future__ import annotations

import atexit
import logging
import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..run_folder import RunFolder
from ..sweep_folder import SweepFolder
from .masking import Masker, hide_run_config, install_log_filter
from .mlflow_run import dataset_records
from .run_tracking import NOT_THE_EXPERIMENT, context_tags
from .store import first_line

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.run = None  # the sweep's parent run, open from the multirun's start to its end
        self.metric = "accuracy"
        self.folder: SweepFolder | None = None
        self.masker: Masker | None = None  # the sweep's secrets, hidden in what the parent logs
        self.study: dict | None = None  # an Optuna search's study (``study_of``): its parent is shared

    def __getstate__(self) -> dict:
        """Launchers such as joblib send the callbacks to their job processes; the jobs do not need the parent
        run (they find its id in the sweep folder), and its outbox thread cannot travel."""
        return {**self.__dict__, "run": None}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.utils import instantiate

        given = [*config.hydra.overrides.hydra, *config.hydra.overrides.task]  # hydra.sweeper.n_trials=... included
        masker = Masker.from_config(OmegaConf.to_container(config, resolve=False), overrides=given)
        install_log_filter(masker)  # before the launcher prints each job's overrides (its secrets too)
        tracking = instantiate(config.tracking)
        if not tracking.enabled:
            return
        folder = SweepFolder(Path(config.hydra.sweep.dir))
        sweep_dir = folder.root
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.metric = config.trainer.metric
        overrides = " ".join(masker.override(o) for o in given if not o.startswith("hydra.mode="))
        self.folder, self.masker, self.study = folder, masker, study_of(config)
        params = {"sweep.overrides": overrides[:6000], "sweep.objective": f"dev_{self.metric}"}
        sweeper = OmegaConf.select(config, "hydra.runtime.choices.hydra/sweeper", default="basic")
        tags = {"sweep.dir": str(sweep_dir.resolve()), "sweep.overrides": overrides, "sweep.sweeper": sweeper}
        earlier = folder.parent_run_id() if self.study is None else None
        if earlier:  # a continued sweep (commands/continued_sweep): its own parent
            self.run, made = tracking.reopen(earlier, sweep_dir, masker, shared=True), False
        elif self.study is None:
            tracking.run_name = f"sweep {datetime.now():%Y-%m-%d %H:%M} · {what_is_swept(config)}"
            self.run, made = tracking.start(params, tags, sweep_dir, masker=masker, shared=True), True
        else:  # an Optuna study: one parent for every worker that runs it
            tracking.run_name = f"study {self.study['name']} · {what_is_swept(config)}"
            self.run, made = study_parent(tracking, self.study, tags, sweep_dir, masker)
        if made:
            self.run.log_params(params)
            self.run.set_tags(context_tags(Path.cwd()))  # the runs table's Source and User for the sweep's row
            self.run.log_datasets(sweep_datasets(config))
        folder.save_parent(self.run.run_id, tracking.experiment, list(swept_keys(config)))
        atexit.register(self.close, crashed=True)  # Hydra skips on_multirun_end when a job raises

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.close()

    def close(self, crashed: bool = False) -> None:
        """Summarise the children on the parent and close it (FAILED if the sweep crashed); idempotent."""
        if self.run is None:
            return
        run, self.run = self.run, None
        hide_run_config(self.folder.root, self.masker)  # the sweep's multirun.yaml keeps the real secrets
        stays_open = self.study is not None and not crashed and not self.folder.study_complete()
        try:
            experiment_id = run.client.get_run(run.run_id).info.experiment_id
            children = run.client.search_runs(
                [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'", max_results=10000
            )
        except Exception as error:  # the store gone at the very end: closed all the same, never left RUNNING
            log.warning("sweep parent run %s: its jobs could not be read (%s); closed %s (a --multirun resume= of "
                        "the sweep summarises it again)", run.run_id, first_line(error),
                        "for the study's other workers" if stays_open else "FAILED")  # fmt: skip
            run.end(None if stays_open else "FAILED")
            return
        running = [c for c in children if c.info.status == "RUNNING"] if stays_open else []  # another worker's
        failed = [c for c in children if c.info.status != "FINISHED" and c not in running]
        tags = {"sweep.jobs": len(children), "sweep.failed_jobs": len(failed)}
        best = best_child(children, self.metric)
        if best is not None:
            key = f"best/dev_{self.metric}"
            run.log_metrics({key: best.data.metrics[key]}, step=len(children))  # a reopened parent logs anew
            tags.update({"sweep.best_run_id": best.info.run_id, "sweep.best_run_name": best.info.run_name})
            tags["mlflow.note.content"] = describe(best, key, len(children), len(failed), experiment_id, run.run_id)
            _made_or_said(lambda: crown_champion(run.client, best))
            _made_or_said(lambda: self._attach_report(run, children))
            _made_or_said(lambda: self._pool_folds(run, children))
        run.log_masked_file(self.folder.saved_config)
        run.set_tags(tags)
        if stays_open:
            run.end(None)  # the study's other workers still run trials: the last one to end closes the parent
            log.info("study parent run %s stays RUNNING: %d jobs so far (%d running), %d failed; the study's other "
                     "workers still run trials, and the last of them closes it", run.run_id, len(children),
                     len(running), len(failed))  # fmt: skip
        else:
            status = "FINISHED" if children and not failed and not crashed else "FAILED"
            run.end(status)
            log.info("sweep parent run %s closed %s: %d jobs, %d failed", run.run_id, status, len(children),
                     len(failed))  # fmt: skip
        if best is not None:
            log.info("best job: %s (%s %.4f) in %s; report: afqmc-report parent=%s", best.info.run_name,
                     f"dev {self.metric}", best.data.metrics[f"best/dev_{self.metric}"],
                     best.data.tags.get("hydra.output_dir"), run.run_id)  # fmt: skip

    def _pool_folds(self, run, children) -> None:
        """For a k-fold sweep: out-of-fold metrics and threshold, and the folds' objective pooled."""
        import json

        import numpy as np

        from ..metrics import best_threshold, classification_metrics, log_loss

        rows = out_of_fold(children)
        if rows is None:
            return
        names = list(rows[0]["probs"])  # the task's labels, in class-id order
        labels = np.array([names.index(r["gold"]) for r in rows])
        probs = np.array([[r["probs"][name] for name in names] for r in rows])
        pooled = classification_metrics(labels, probs, log_loss(labels, probs), names=names)
        objectives = [
            c.data.metrics[f"best/dev_{self.metric}"] for c in children if f"best/dev_{self.metric}" in c.data.metrics
        ]
        run.log_metrics({**{f"oof/{k}": v for k, v in pooled.items()}, "oof/pairs": len(rows),
                         f"folds/best_dev_{self.metric}_mean": float(np.mean(objectives)),
                         f"folds/best_dev_{self.metric}_std": float(np.std(objectives, ddof=1)) if len(objectives) > 1
                         else None}, step=len(children))  # fmt: skip
        path = self.folder.out_of_fold
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        run.log_artifact(path)
        if len(names) == 2:  # a clean threshold: chosen on predictions of pairs no model trained on
            threshold, f1_at_threshold = best_threshold(labels, probs[:, 1])
            run.log_metrics({"oof/threshold": threshold, "oof/f1_at_threshold": f1_at_threshold},
                            step=len(children))  # fmt: skip
            log.info("out-of-fold over %d pairs: F1 %.4f at 0.5, %.4f at threshold %.4f", len(rows), pooled["f1"],
                     f1_at_threshold, threshold)  # fmt: skip
        else:
            log.info("out-of-fold over %d pairs: accuracy %.4f, macro-F1 %.4f", len(rows), pooled["accuracy"],
                     pooled["macro_f1"])  # fmt: skip

    def _attach_report(self, run, children) -> None:
        from .comparison import rows_of, write_report

        folder = self.folder.report
        write_report(rows_of(children, self.metric), self.metric, f"sweep {run.run_id}", folder)
        run.log_artifacts(folder, "report")


def study_name(config: DictConfig) -> str:
    """An Optuna search's study: ``hydra.sweeper.study_name``, else ``<data option>_<model option>``."""
    choices = config.hydra.runtime.choices
    named = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
    return named or f"{choices.get('data') or 'data'}_{choices.get('model') or 'model'}"


def study_of(config: DictConfig) -> dict | None:
    """An Optuna search's study, as its parent run is tagged: its name and an id of its storage and name (the
    storage's URI may hold a password and characters a search filter cannot quote); None for a grid."""
    import hashlib

    from .store import resolve_uri

    if OmegaConf.select(config, "hydra.runtime.choices.hydra/sweeper", default="basic") != "afqmc_optuna":
        return None
    name = study_name(config)
    storage = resolve_uri(OmegaConf.select(config, "hydra.sweeper.storage", default="sqlite:///optuna.db"))
    return {"name": name, "id": hashlib.sha1(f"{storage}#{name}".encode()).hexdigest()[:16]}


def study_parent(tracking, study: dict, tags: dict, folder: Path, masker: Masker):
    """The one MLflow parent run of an Optuna study, however many workers run it (terminals, machines, SLURM array
    tasks), and whether this worker made it. Found by its tag ``sweep.study_id``, or made; two made at the same
    moment keep the earlier and the other is deleted, before anything is logged to it (no lock: a server store
    has none)."""
    client = tracking.client()
    experiment_id = tracking.experiment_id(client)

    def parents() -> list:
        found = client.search_runs([experiment_id], filter_string=f"tags.`sweep.study_id` = '{study['id']}'")
        return sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))

    found, mine = parents(), None
    if not found:
        study_tags = {**tags, "sweep.study": study["name"], "sweep.study_id": study["id"]}
        mine = client.create_run(experiment_id, run_name=tracking.run_name, tags=study_tags).info.run_id
        found = parents()
        if found[0].info.run_id != mine:  # another worker made one first
            client.delete_run(mine)
    parent = found[0].info.run_id
    if parent != mine:
        log.info("the study %r has its MLflow parent run already (%s): this worker's trials are nested under it",
                 study["name"], parent)  # fmt: skip
    return tracking.reopen(parent, folder, masker, shared=True), parent == mine


def sweep_datasets(config: DictConfig) -> list[dict]:
    """The data files of the sweep's base config, so its row in the runs table names them too (checked here
    once: the jobs then find them checked)."""
    from hydra.utils import instantiate

    try:
        data = instantiate(config.data)
        return dataset_records(data.name, data.check())
    except Exception:  # (the jobs report bad data themselves)
        return []


def _made_or_said(part: Callable[[], None]) -> None:
    """One part of the parent's summary (the champion alias, the report, the out-of-fold pool): one that cannot be
    made (a job's predictions unreadable, the registry gone) is said, and the parent is still closed."""
    try:
        part()
    except Exception as error:  # (Hydra would swallow it, and the parent would stay RUNNING for good)
        log.warning("the sweep's summary goes without one part: %s", first_line(error))


def out_of_fold(children: list) -> list[dict] | None:
    """The dev predictions of a k-fold sweep's jobs, one per pair; None when the sweep is not one, or when it varies
    more than the fold (one config's pairs would be taken for another's, two tasks' labels mixed)."""
    import json

    folds = {c.data.params.get("data.folds") for c in children}
    if len(folds) != 1 or folds == {"null"} or None in folds:
        return None
    configs = {tuple(sorted((k, v) for k, v in c.data.params.items() if k != "data.fold" and k.split(".")[0] not in
                            NOT_THE_EXPERIMENT)) for c in children}  # fmt: skip
    if len(configs) > 1:
        log.info("the sweep varies more than data.fold: no out-of-fold pool (sweep the folds of one config for it)")
        return None
    rows: dict = {}
    for child in children:
        path = RunFolder(child.data.tags.get("hydra.output_dir", "")).predictions("dev")
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                rows[row["id"]] = row
    return list(rows.values()) or None


def swept_keys(config: DictConfig) -> dict[str, int | None]:
    """The keys a sweep varies: a grid's, with their number of values; a search's, with None."""
    searched = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if OmegaConf.select(config, "hydra.runtime.choices.hydra/sweeper", default="basic") != "basic" and searched:
        return dict.fromkeys(searched)
    swept = {}
    for override in config.hydra.overrides.task:
        key, _, value = override.partition("=")
        if "," in value and not value.startswith(("[", "{", "'", '"')):
            swept[key.lstrip("+~")] = len(value.split(","))
    return swept


def what_is_swept(config: DictConfig) -> str:
    """``optim.lr×3 seed×3`` for a grid; ``optuna: optim.lr, ...`` for a search."""
    swept = swept_keys(config)
    if swept and all(count is None for count in swept.values()):
        return "optuna: " + ", ".join(swept)
    return " ".join(f"{key}×{count}" for key, count in swept.items()) or "one job"


def best_child(children: list, metric: str):
    """The report's first row among the FINISHED children with an objective (a job that failed or was pruned logged
    evaluations too, but is never the best): see the module docstring."""
    from .comparison import rows_of

    key = f"best/dev_{metric}"
    scored = [c for c in children if c.info.status == "FINISHED" and key in c.data.metrics
              and not math.isnan(c.data.metrics[key])]  # fmt: skip
    if not scored:
        return None
    first = rows_of(scored, metric).iloc[0]["run_id"]
    return next(c for c in scored if c.info.run_id == first)


def describe(best, key: str, jobs: int, failed: int, experiment_id: str, parent_id: str) -> str:
    """The parent's description (Markdown in the UI): the best job, linked, and where the report is."""
    link = f"[{best.info.run_name}](#/experiments/{experiment_id}/runs/{best.info.run_id})"
    return (f"{jobs} jobs ({failed} failed). Best: {link}, {key} = {best.data.metrics[key]:.4f}.\n\n"
            f"The jobs compared: artifacts `report/report.md`; `afqmc-report parent={parent_id}`. The best "
            f"weights: `runs:/{parent_id}/best_model`.")  # fmt: skip


def crown_champion(client, best) -> None:
    """The best job's registered model version (``tracking.register_as``) gets the alias ``champion``."""
    registered = best.data.tags.get("registered_model_version")
    if registered:
        name, version = registered.rsplit("/", 1)
        client.set_registered_model_alias(name, "champion", version)
        log.info("models:/%s@champion is version %s (the sweep's best job)", name, version)
