"""A sweep's own folder (``hydra.sweep.dir``) and every file of the sweep itself in it: the one place that knows
their names, as ``run_folder`` is for a run's. Its jobs' folders (``<sweep dir>/<job number>``) are run folders.

Several parts read and write them: the sweeper (``multirun.yaml``; the Optuna sweeper's ``optuna_study.json``), the
sweep's MLflow callback (the parent run, what is swept, the report, the out-of-fold predictions), every job (which
parent to nest under, in which experiment, what its name shows) and ``--multirun resume=`` (the sweep's overrides):

=========================  ========================================================================================
``multirun.yaml``          the sweep's config, with the overrides it was started with (written by every sweeper)
``sweep_overrides.json``   those overrides again, written whole as each start of the sweep begins (Hydra rewrites
                           ``multirun.yaml`` in place: a kill can cut it and leave valid YAML with fewer of them)
``mlflow_parent_run_id``   the sweep's MLflow parent run: every job nests its run under it; a continued sweep reopens it
``mlflow_experiment``      the parent's experiment: every job is recorded there
``swept_keys.json``        what the sweep varies, which its jobs' run names show
``optuna_study.json``      written by the Optuna sweeper as it ends: did it leave the study complete?
``oof_predictions.jsonl``  a k-fold sweep's dev predictions, pooled out of fold
``report/``                the report of its jobs (Markdown, CSV, plots), logged to the parent
``.tracking/``             the parent run's outbox journals, one per process that logs it (``<pid>-<hex>/``): two
                           continuations or a study's workers log it at once; an ended one's, taken over by the next
=========================  ========================================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .files import replaced_file


@dataclass(frozen=True)
class SweepFolder:
    """The paths of the sweep folder ``root``, and its small files read and written; nothing is created by asking."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def saved_config(self) -> Path:
        return self.root / "multirun.yaml"

    @property
    def overrides_file(self) -> Path:
        return self.root / "sweep_overrides.json"

    @property
    def parent_run_file(self) -> Path:
        return self.root / "mlflow_parent_run_id"

    @property
    def experiment_file(self) -> Path:
        return self.root / "mlflow_experiment"

    @property
    def swept_file(self) -> Path:
        return self.root / "swept_keys.json"

    @property
    def study_file(self) -> Path:
        return self.root / "optuna_study.json"

    @property
    def out_of_fold(self) -> Path:
        return self.root / "oof_predictions.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def holds_a_sweep(self) -> bool:
        """Whether a sweep started here (a ``multirun.yaml``, or a start cut short before its sweeper wrote one)."""
        return self.saved_config.is_file() or self.overrides_file.is_file()

    def save_overrides(self, hydra: list[str], task: list[str]) -> None:
        """The overrides this start of the sweep was given, replacing the last start's whole (owner-only: secrets)."""
        with replaced_file(self.overrides_file, private=True) as out:
            out.write(json.dumps({"hydra": hydra, "task": task}, ensure_ascii=False, indent=1) + "\n")

    def parent_run_id(self) -> str | None:
        return _read(self.parent_run_file)

    def parent_experiment(self) -> str | None:
        return _read(self.experiment_file)

    def swept_keys(self) -> list[str]:
        """The keys the sweep varies (its jobs' run names show them)."""
        return json.loads(self.swept_file.read_text(encoding="utf-8")) if self.swept_file.exists() else []

    def study_complete(self) -> bool:
        """Whether the Optuna sweeper found the study complete when it ended (no trial left to run or running)."""
        return self.study_file.exists() and json.loads(self.study_file.read_text(encoding="utf-8")).get("complete")

    def save_parent(self, run_id: str, experiment: str, swept: list[str]) -> None:
        """What every job reads as it starts: its parent run, the parent's experiment, what the sweep varies."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.parent_run_file.write_text(run_id + "\n", encoding="utf-8")
        self.experiment_file.write_text(experiment + "\n", encoding="utf-8")
        self.swept_file.write_text(json.dumps(swept) + "\n", encoding="utf-8")

    def save_study(self, name: str, complete: bool) -> None:
        self.study_file.write_text(json.dumps({"study": name, "complete": complete}) + "\n", encoding="utf-8")


def _read(path: Path) -> str | None:
    return (path.read_text(encoding="utf-8").strip() or None) if path.exists() else None
