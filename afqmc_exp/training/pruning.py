"""Optuna pruning from inside a training job: each evaluation's dev metric is reported to the trial, and the
job stops when the study's pruner says the trial is clearly worse than the others at the same step.

The sweeper (``hydra_plugins/afqmc_optuna_sweeper``) runs each trial as an ordinary training job, possibly
in another process, so it hands the job what it needs to find its trial again (``optuna.storage``,
``optuna.study``, ``optuna.trial``: the trial's number) and the pruner's settings (``optuna.pruner``).
A pruned job raises :class:`optuna.TrialPruned`; its MLflow run is closed KILLED with the tag
``optuna.state=PRUNED`` and the sweeper records the trial as PRUNED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband", "threshold", "none")


def make_pruner(spec: Mapping[str, Any] | None):
    """An Optuna pruner from ``{type: median|hyperband|threshold|none, ...}``:

    * ``median``: stop a trial whose value at a step is worse than the median of earlier trials at that step
      (``n_startup_trials`` trials first, ``n_warmup_steps`` steps first);
    * ``hyperband``: successive halving over ``min_resource``..``max_resource`` steps;
    * ``threshold``: stop a trial whose value falls below ``lower`` (or above ``upper``);
    * ``none``: never.
    """
    import inspect

    import optuna

    spec = dict(spec or {"type": "none"})
    kind = spec.pop("type", "median")
    classes = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}  # fmt: skip
    if kind not in classes:
        raise ValueError(f"pruner type {kind!r}: use one of {', '.join(PRUNERS)}")
    accepted = inspect.signature(classes[kind]).parameters
    ignored = sorted(set(spec) - set(accepted))  # e.g. the preset's median settings under another type
    if ignored:
        log.warning("the %s pruner takes no %s: ignored", kind, ", ".join(ignored))
    return classes[kind](**{k: v for k, v in spec.items() if k in accepted})


def trial_reporter(spec: Mapping[str, Any], metric: str) -> Callable[[int, float], None]:
    """``report(step, value)`` for the trial ``spec`` names (the ``optuna`` config node a search gives its jobs)."""
    import optuna

    from ..tracking.store import resolve_uri

    storage = optuna.storages.get_storage(resolve_uri(str(spec["storage"])))
    study_id = storage.get_study_id_from_name(str(spec["study"]))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(spec["trial"]))
    study = optuna.load_study(study_name=str(spec["study"]), storage=storage, pruner=make_pruner(spec.get("pruner")))
    trial = optuna.trial.Trial(study, trial_id)

    def report(step: int, value: float) -> None:
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"trial {spec['trial']} pruned at step {step} (dev {metric} {value:.4f})")

    return report


def is_pruned(error: BaseException) -> bool:
    """Whether ``error`` is Optuna's TrialPruned (without importing Optuna where no search runs)."""
    import sys

    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)
