"""What a training run is recorded as, decided once for a job: its MLflow run's name, tags and params, the sweep
parent it nests under, and the run folder that keeps its run id and outbox journal (:class:`RunTracking`).

The train command hands its config to :meth:`RunTracking.for_job` and gets one object back, which the training
run opens (:meth:`RunTracking.open`) without knowing how a run is named or tagged. This module and the command are
the only places that see the DictConfig; ``training.run`` sees the typed result.

* **Name** (``default_run_name``): ``<model>-<task>-lr<lr>-bs<batch>-s<seed>``, then what tells runs apart: in a
  sweep every other value it varies (so no two of its jobs share a name), elsewhere four hex digits of the config's
  digest (so a 40-step control and the full run differ, while the same config run twice keeps its name).
* **Tags**: what the command was and where its folder is (``hydra.*``), the run page's description, MLflow's
  context tags (user, source, the code's git commit and whether the tree was dirty), what was trained on what
  (``model``, ``task``, ``metric``: columns the UI can filter) and, in a sweep, the job's place in it. A resumed run
  is tagged with the group options it was started with, not the resuming command's defaults.
* **Params**: the resolved config flattened (``optim.lr``, ``data.test_file``), values as YAML writes them, secret
  keys and passwords inside URIs masked, then every value of the run's :class:`Masker` hidden.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..run_folder import RunFolder
from ..sweep_folder import SweepFolder
from .masking import MASK, SECRET_KEY, Masker, mask_uri
from .mlflow_run import NoRun, Run
from .mlflow_tracking import MlflowTracking

REPO_DIR = Path(__file__).resolve().parents[2]  # a checkout's root, when the package runs from one
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
IN_THE_NAME = ("model", "data", "optim.lr", "data.batch_size", "seed")
NOT_THE_EXPERIMENT = ("tracking", "resume", "rerun")  # where a run is recorded and how it started: not what it is


@dataclass
class RunTracking:
    """How one training run is tracked: the store's settings, what its MLflow run is opened with, and the run folder
    that keeps its id and its outbox's journal."""

    tracking: MlflowTracking
    folder: RunFolder
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None  # a sweep's parent run
    masker: Masker | None = None  # the run's secrets, hidden in what is uploaded (see masking)

    @classmethod
    def for_job(cls, cfg: DictConfig, hydra_cfg, folder: RunFolder, masker: Masker, *, resumed: bool = False,
                run_name: str | None = None, tags: Mapping[str, str] | None = None) -> RunTracking:  # fmt: skip
        """The tracking of the job Hydra runs with ``cfg`` in ``folder``. In a sweep it nests under the sweep's
        parent run, in its experiment. ``run_name`` and ``tags``: a rerun's own (what it reruns)."""
        from hydra.types import RunMode
        from hydra.utils import instantiate

        tracking = instantiate(cfg.tracking)
        in_sweep, sweep = hydra_cfg.mode == RunMode.MULTIRUN, SweepFolder(hydra_cfg.sweep.dir)
        choices = saved_choices(folder) if resumed else dict(hydra_cfg.runtime.choices)  # the run's own options
        if in_sweep:
            tracking.experiment = sweep.parent_experiment() or tracking.experiment
        if not tracking.run_name:
            tracking.run_name = run_name or default_run_name(cfg, choices, sweep.swept_keys() if in_sweep else [])
        if not tracking.enabled:  # tags only feed the MLflow run: without one, MLflow is never imported (slow)
            return cls(tracking, folder, masker=masker)
        params = masker.values(flatten(OmegaConf.to_container(cfg, resolve=True)))
        tags = {**run_tags(hydra_cfg, choices, folder, masker, in_sweep), **subject_tags(cfg, choices), **(tags or {})}
        return cls(tracking, folder, params, tags, sweep.parent_run_id() if in_sweep else None, masker)

    def with_tags(self, tags: Mapping[str, str]) -> RunTracking:
        """The same tracking with ``tags`` added (the hardware a run finds as it starts)."""
        return replace(self, tags={**self.tags, **tags})

    def open(self, resume: bool) -> Run | NoRun:
        """Open the run, or reopen the folder's own (resuming), over the outbox journal kept in the folder."""
        if resume and self.folder.run_id():
            return self.tracking.reopen(self.folder.run_id(), self.folder.root, self.masker)
        run = self.tracking.start(self.params, self.tags, self.folder.root, parent_run_id=self.parent_run_id,
                                  masker=self.masker)  # fmt: skip
        self.folder.save_run_id(run.run_id)
        return run


def default_run_name(cfg: DictConfig, choices: Mapping, swept: list[str] = ()) -> str:
    """Short readable run names such as ``minilm-afqmc-lr2e-05-bs16-s42-7f3a`` (see the module docstring); a swept
    number is shown to 3 digits (``...-s42-epochs2``, ``...-wd0.01``)."""
    model, task = model_and_task(cfg, choices)
    name = f"{model}-{task}-lr{cfg.optim.lr:.3g}-bs{cfg.data.batch_size}-s{cfg.seed}"
    if not swept:
        return f"{name}-{config_digest(cfg)[:4]}"
    for key in (k for k in swept if k not in IN_THE_NAME):
        value = choices.get(key) if key in choices else OmegaConf.select(cfg, key, default=None)
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        name += f"-{key.rsplit('.', 1)[-1]}{shown}" if "." in key else f"-{shown}"
    return name


def model_and_task(cfg: DictConfig, choices: Mapping) -> tuple[str, str]:
    """The model's option (else its folder's name) and the task's name, as names and tags show them."""
    model = choices.get("model") or Path(str(cfg.model.name_or_path)).name
    return model, str(cfg.data.get("name", "afqmc"))  # configs saved before there were tasks were AFQMC's


def config_digest(cfg: DictConfig) -> str:
    """SHA-1 of what the run is (its resolved config, less where it is recorded and how it started)."""
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    what = {key: value for key, value in tree.items() if key not in NOT_THE_EXPERIMENT}
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def saved_choices(folder: RunFolder) -> dict:
    """The group options a run folder's run was started with (its ``.hydra/hydra.yaml``)."""
    path = folder.hydra_settings
    if not path.exists():
        return {}
    return dict(OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices", default={}) or {})


def subject_tags(cfg: DictConfig, choices: Mapping) -> dict[str, str]:
    """What was trained on what, as columns the UI can show and filter (``tags.model = 'minilm'``)."""
    model, task = model_and_task(cfg, choices)
    return {"model": model, "model.name": str(cfg.model.name_or_path), "task": task, "metric": str(cfg.trainer.metric)}


def run_tags(hydra_cfg, choices: Mapping, folder: RunFolder, masker: Masker, in_sweep: bool) -> dict[str, str]:
    """What the command was, where its folder is, MLflow's context tags and, in a sweep, its place in it."""
    overrides = [masker.override(o) for o in hydra_cfg.overrides.task]
    command = " ".join([Path(sys.argv[0]).name, *overrides])
    tags = {
        "hydra.overrides": " ".join(overrides) or "(none)",
        "hydra.output_dir": str(folder.root),
        "hydra.choices": json.dumps(dict(choices)),
        "mlflow.note.content": f"`{command}`\n\nRun folder: `{folder.root}`",  # the run page's description
        **context_tags(REPO_DIR if (REPO_DIR / ".git").exists() else Path.cwd()),  # the code's commit, else the cwd's
    }
    if in_sweep:
        tags.update({"sweep.dir": str(Path(hydra_cfg.sweep.dir).resolve()), "sweep.job_num": str(hydra_cfg.job.num)})
    return tags


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
