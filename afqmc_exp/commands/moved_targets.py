"""Configs saved by an older afqmc_exp brought to today's shape: ``_target_`` paths that moved, groups added since.

A run folder's ``.hydra/config.yaml`` and an MLflow run's ``hydra/config.yaml`` artifact name each class and
function by its import path at the time they were saved (``afqmc_exp.optim.adamw``), and ``resume=`` and
``rerun=`` load them. Rather than keep a module at every old path as an alias that nothing else uses, the train
command maps the old module paths in every ``_target_`` as it takes a config (:func:`upgrade`). A path that is
today's, or a user's own, is left as it is. ``MOVED`` only ever grows: a saved config may be years old.

A group added since a config was saved (``regularizer``, 26 November 2026) is missing from it; the run ran
without one, which the option in ``ADDED_GROUPS`` reproduces. A key added to a group needs nothing here: the
target's own default applies, and the config checks let it be absent.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

MOVED = {  # module before -> module now (December 2026: the flat package became commands/training/tracking)
    "afqmc_exp.optim": "afqmc_exp.training.optim",
    "afqmc_exp.trainer": "afqmc_exp.training.trainer",
    "afqmc_exp.loop": "afqmc_exp.training.trainer",  # 26 November 2026: loop.py split by concern
    "afqmc_exp.regularizers": "afqmc_exp.training.regularizers",
    "afqmc_exp.ema": "afqmc_exp.training.ema",
    "afqmc_exp.checkpoint": "afqmc_exp.training.checkpoint",
    "afqmc_exp.experiment": "afqmc_exp.training.run",
    "afqmc_exp.inference": "afqmc_exp.training.inference",
    "afqmc_exp.hardware": "afqmc_exp.training.hardware",
    "afqmc_exp.tracking": "afqmc_exp.tracking.mlflow_tracking",
    "afqmc_exp.tracking.config": "afqmc_exp.tracking.mlflow_tracking",  # 6 December 2026: named for its class
    "afqmc_exp.tracked_run": "afqmc_exp.tracking.mlflow_run",
    "afqmc_exp.sweep": "afqmc_exp.tracking.sweep",
    "afqmc_exp.pruning": "afqmc_exp.training.pruning",
    "afqmc_exp.fetch": "afqmc_exp.tracking.stored_weights",
    "afqmc_exp.cli": "afqmc_exp.commands.train",
    "afqmc_exp.commands": "afqmc_exp.commands.score",
    "afqmc_exp.sample": "afqmc_exp.data.quickstart_sample",
}


MOVED_NAMES = {  # a name that left its module, as it is named once MOVED is applied (December 2026)
    "afqmc_exp.training.trainer.TrainerConfig": "afqmc_exp.training.recipe.TrainerConfig",  # beside the Recipe
}

ADDED_GROUPS = {  # group -> the option that does what a config saved before it existed did
    "regularizer": {"_target_": "afqmc_exp.training.regularizers.NoRegularizer"},
}


def today(target: str) -> str:
    """``target`` with its module's old path replaced by today's (``afqmc_exp.optim.adamw`` ->
    ``afqmc_exp.training.optim.adamw``), then a name that moved on its own (``MOVED_NAMES``); anything else
    unchanged."""
    module, _, name = target.rpartition(".")
    target = f"{MOVED[module]}.{name}" if module in MOVED else target
    return MOVED_NAMES.get(target, target)


def upgrade(cfg: DictConfig) -> DictConfig:
    """Every old ``_target_`` of ``cfg`` mapped and every group added since filled in, in place (nothing is
    resolved); returns ``cfg``."""
    added = [group for group in ADDED_GROUPS if group not in cfg]
    for group in added:
        cfg[group] = ADDED_GROUPS[group]
    if added:
        log.info(
            "a config saved before these groups existed: %s",
            ", ".join(f"{g}: {ADDED_GROUPS[g]['_target_']}" for g in added),
        )
    moved = {}
    for key, target in _targets(OmegaConf.to_container(cfg, resolve=False)):
        if today(target) != target:
            OmegaConf.update(cfg, key, today(target), merge=False)
            moved[target] = today(target)
    if moved:
        log.info("a config saved before afqmc_exp's modules moved: %s",
                 ", ".join(f"{old} -> {new}" for old, new in sorted(moved.items())))  # fmt: skip
    return cfg


def _targets(node, prefix: str = ""):
    """(dotted key, value) of every string ``_target_`` under ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if key == "_target_" and isinstance(value, str):
            yield f"{prefix}{key}", value
        else:
            yield from _targets(value, f"{prefix}{key}.")
