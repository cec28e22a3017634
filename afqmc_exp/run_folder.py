"""A run's output folder and every path in it: the one place that knows their names.

Many parts read and write the same folder: the train command (is it finished? which MLflow run?), the training
run (predictions, result.json, plots, the lock), the trainer (best weights, last checkpoint), the outbox (its
journal), evaluate/predict (a run folder given as ``ckpt``) and the sweep parent (its jobs' dev predictions).
Each asks a :class:`RunFolder` instead of spelling a file name, so a name changes in one line and a reader finds
every file of a run folder here:

=====================  ====================================================================================
``best_model/``        the best weights, a ``save_pretrained`` folder (swapped atomically, see ``files``)
``last_checkpoint/``   what ``resume=`` continues from; removed when the run finishes (unless kept)
``result.json``        written when a run finishes: the best metric and step, final metrics, speed, run id
``mlflow_run_id``      the MLflow run this folder belongs to (``resume=<folder>`` reopens it)
``.run.lock``          one process per run folder (``files.held``: a killed process lets go)
``.config_digest``     what the run is (a digest of its config), written as it starts: a sweep's job that meets the
                       folder again continues it only if it is the same (Hydra rewrites ``.hydra/`` first)
``.tracking/``         the outbox's journal of MLflow writes not yet delivered
``.hydra/``            Hydra's saved config (``config.yaml``) and its own settings (``hydra.yaml``)
``train.log``          the train command's log (a resumed run appends to it)
``<split>_predictions.jsonl``, ``plots/``, ``profile/``, ``*.log``   the outputs a finished run logs
=====================  ====================================================================================
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

BEST_MODEL = "best_model"  # also the artifact path of the logged weights, and what ``runs:/<id>/best_model`` names


class RunFolderDamaged(ValueError):
    """A run folder's own file cannot be read; the message names it and what to do."""


@dataclass(frozen=True)
class RunFolder:
    """The paths of the run folder ``root``; nothing is created by asking."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def best_model(self) -> Path:
        return self.root / BEST_MODEL

    @property
    def last_checkpoint(self) -> Path:
        return self.root / "last_checkpoint"

    @property
    def swapped(self) -> tuple[Path, Path]:
        """The folders replaced whole at each save (``files.atomic_dir``), which a kill may leave mid-swap."""
        return self.best_model, self.last_checkpoint

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def run_id_file(self) -> Path:
        return self.root / "mlflow_run_id"

    @property
    def lock(self) -> Path:
        return self.root / ".run.lock"

    @property
    def config_digest_file(self) -> Path:
        return self.root / ".config_digest"

    @property
    def journal(self) -> Path:
        return self.root / ".tracking"

    @property
    def hydra(self) -> Path:
        return self.root / ".hydra"

    @property
    def config(self) -> Path:
        return self.hydra / "config.yaml"

    @property
    def hydra_settings(self) -> Path:
        return self.hydra / "hydra.yaml"

    @property
    def log(self) -> Path:
        """The train command's log (Hydra names it after the job, ``train``); a resumed run appends to it."""
        return self.root / "train.log"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def profile(self) -> Path:
        return self.root / "profile"

    @property
    def resume_argument(self) -> str:
        """``resume=<this folder>`` as a shell takes it pasted (quoted where the path has spaces or the like)."""
        return shlex.quote(f"resume={self.root}")

    def predictions(self, split: str) -> Path:
        return self.root / f"{split}_predictions.jsonl"

    def all_predictions(self) -> list[Path]:
        return sorted(self.root.glob("*_predictions.jsonl"))

    def logs(self) -> list[Path]:
        return sorted(self.root.glob("*.log"))

    @property
    def finished(self) -> bool:
        return self.result.exists()

    @property
    def holds_a_run(self) -> bool:
        """Whether a run opened here, finished or killed: it left a run id, a journal, a checkpoint or a result."""
        return any(p.exists() for p in (self.result, self.run_id_file, self.journal, self.last_checkpoint,
                                        self.best_model))  # fmt: skip

    def read_result(self) -> dict:
        """``result.json``; one that cannot be read raises :class:`RunFolderDamaged`, which says what to do."""
        try:
            result = json.loads(self.result.read_text(encoding="utf-8"))
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
            return result
        except (ValueError, UnicodeDecodeError) as error:
            aside = self.result.with_name(self.result.name + ".damaged")
            raise RunFolderDamaged(
                f"{self.result}: damaged ({str(error)[:100]}), as a run cut while finishing leaves it; move it aside "
                f"(mv {shlex.quote(str(self.result))} {shlex.quote(str(aside))}) and resume again: the run finishes "
                "again from its last checkpoint"
            ) from None

    def config_digest(self) -> str | None:
        """The digest of the config the run started with; None for a folder made before it was kept."""
        text = self.config_digest_file.read_text().strip() if self.config_digest_file.exists() else ""
        return text or None

    def save_config_digest(self, digest: str) -> None:
        from .files import replaced_file

        with replaced_file(self.config_digest_file) as file:
            file.write(digest + "\n")

    def run_id(self) -> str | None:
        """The MLflow run id written when the run opened; None without one (tracking off, or not opened yet)."""
        text = self.run_id_file.read_text().strip() if self.run_id_file.exists() else ""
        return text or None

    def save_run_id(self, run_id: str | None) -> None:
        from .files import replaced_file

        with replaced_file(self.run_id_file) as file:
            file.write(f"{run_id or ''}\n")

    def saved_config_problem(self) -> str | None:
        """Why ``.hydra/config.yaml`` is not an afqmc-exp run's saved config (unreadable, or another program's), or
        None when it is one (its ``trainer`` is ours: every config since the first release names it)."""
        import yaml

        try:
            saved = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            return f"it cannot be read ({' '.join(str(error).split())[:160]})"
        target = saved.get("trainer", {}).get("_target_", "") if isinstance(saved, dict) else ""
        if not isinstance(target, str) or not target.startswith("afqmc_exp."):
            return "it is not an afqmc-exp run's config (no afqmc_exp trainer)"
        return None

    def unused(self) -> bool:
        """Only what Hydra and the lock make before a run opens: a refused run's folder, safe to delete."""
        made_before = {self.hydra.name, self.log.name, self.lock.name, self.config_digest_file.name}
        return self.root.is_dir() and {p.name for p in self.root.iterdir()} <= made_before
