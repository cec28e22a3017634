"""Command-line edges: the Hydra config of ``train.py`` becomes typed objects here, and ``evaluate.py`` /
``predict.py`` parse ``key=value`` arguments against typed schemas (so a typo or a wrong type is one
clear line, in the same override syntax as training).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data import DataError
from .schema import ConfigError, validate

log = logging.getLogger(__name__)
REPO_DIR = Path(__file__).resolve().parent.parent


def default_run_name(cfg: DictConfig, model_choice: str | None) -> str:
    """Readable run names such as ``minilm-lr2e-05-bs16-s42``."""
    model = model_choice or Path(str(cfg.model.name_or_path)).name
    return f"{model}-lr{cfg.optim.lr:g}-bs{cfg.data.batch_size}-s{cfg.seed}"


def find_run_dir(resume: str, tracking) -> Path:
    """``resume`` is a run's output folder, or an MLflow run id whose ``hydra.output_dir`` tag names it."""
    folder = Path(resume).expanduser()
    if not folder.is_dir():
        from mlflow.exceptions import MlflowException

        try:
            folder = Path(tracking.client().get_run(resume).data.tags["hydra.output_dir"])
        except (MlflowException, KeyError):
            raise SystemExit(f"error: resume={resume}: neither a run's output folder nor the id of an MLflow run "
                             f"in {tracking.uri}") from None
    if not (folder / ".hydra" / "config.yaml").exists():
        raise SystemExit(f"error: resume={resume}: {folder} has no .hydra/config.yaml; is it a train.py output folder?")
    return folder


def train_from_config(cfg: DictConfig) -> float:
    """The body of ``train.py``: instantiate every group, then call the typed task.

    With ``resume=...`` the earlier run's own config (its ``.hydra/config.yaml``) is used, so a resumed run
    is the same experiment; it continues in the earlier output folder and MLflow run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra.utils import instantiate

    hydra_cfg = HydraConfig.get()
    output_dir, resume = Path(hydra_cfg.runtime.output_dir), cfg.get("resume")
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if resume:
        output_dir = find_run_dir(str(resume), instantiate(cfg.tracking))
        cfg = OmegaConf.load(output_dir / ".hydra" / "config.yaml")
        log.info("resuming %s with its saved config", output_dir)
    try:
        return _train(cfg, hydra_cfg, output_dir, resume, in_sweep)
    except (ConfigError, DataError) as err:
        if in_sweep:  # the sweep records this job as failed and goes on
            raise
        raise SystemExit(f"error: {err}") from None  # a clear message, not a traceback


def _train(cfg: DictConfig, hydra_cfg, output_dir: Path, resume, in_sweep: bool) -> float:
    from hydra.utils import instantiate

    from .experiment import run
    from .sweep import parent_run_id
    from .tracking import flatten, git_state

    validate(cfg)  # before any model is loaded or run opened
    tracking = instantiate(cfg.tracking)
    if not tracking.run_name:
        tracking.run_name = default_run_name(cfg, hydra_cfg.runtime.choices.get("model"))
    tags = {"hydra.overrides": " ".join(hydra_cfg.overrides.task) or "(none)",
            "hydra.output_dir": str(output_dir),
            "hydra.choices": json.dumps(dict(hydra_cfg.runtime.choices)),
            **git_state(REPO_DIR)}
    if in_sweep:
        tags.update({"sweep.dir": str(Path(hydra_cfg.sweep.dir).resolve()), "sweep.job_num": str(hydra_cfg.job.num)})
    return run(data=instantiate(cfg.data), load_model=instantiate(cfg.model), make_optimizer=instantiate(cfg.optim),
               make_scheduler=instantiate(cfg.scheduler), trainer=instantiate(cfg.trainer), tracking=tracking,
               seed=cfg.seed, output_dir=output_dir, params=flatten(OmegaConf.to_container(cfg, resolve=True)),
               tags=tags, resume=bool(resume), parent_run_id=parent_run_id(hydra_cfg.sweep.dir) if in_sweep else None)


# ----------------------------------------------------------------------------- evaluate.py / predict.py
@dataclass
class EvaluateArgs:
    """python evaluate.py ckpt=DIR file=PATH [batch_size=N] [max_length=N] [device=auto|cpu]"""

    ckpt: str = MISSING  # a best_model folder written by train.py (or any save_pretrained classifier)
    file: str = MISSING  # a labelled AFQMC JSON-lines file
    batch_size: int | None = None  # default: the eval batch size the weights were trained with
    max_length: int | None = None  # default: the max_length the weights were trained with
    device: str = "auto"


@dataclass
class PredictArgs(EvaluateArgs):
    """python predict.py ckpt=DIR file=PATH out=PATH [batch_size=N] [max_length=N] [device=auto|cpu]"""

    out: str = MISSING  # where to write one {"id", "label", "prob"} line per pair


def parse_args(schema: type, argv: Sequence[str]):
    if any(arg in ("-h", "--help") for arg in argv):
        print(schema.__doc__)
        for f in fields(schema):
            print(f"  {f.name}")
        raise SystemExit(0)
    bad = [arg for arg in argv if "=" not in arg]
    try:
        if bad:
            raise ValueError(f"arguments must be key=value, got {' '.join(bad)}")
        args = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(argv)))
        missing = sorted(OmegaConf.missing_keys(args))
        if missing:
            raise ValueError(f"missing {', '.join(m + '=...' for m in missing)}")
        return OmegaConf.to_object(args)
    except (ValueError, OmegaConfBaseException) as err:
        raise SystemExit(f"error: {str(err).splitlines()[0]}\nusage: {schema.__doc__}") from None


def _load_for_scoring(args: EvaluateArgs, require_labels: bool):
    from accelerate import Accelerator

    from .data import read_pairs
    from .model import load_pair_classifier, read_checkpoint_meta

    examples = read_pairs(args.file, require_labels=require_labels)
    ckpt = Path(args.ckpt)
    if not (ckpt / "config.json").exists():
        raise SystemExit(f"error: {ckpt}: no config.json; ckpt must be a best_model folder written by train.py")
    meta = read_checkpoint_meta(ckpt)
    pretrained = load_pair_classifier(str(ckpt))
    max_length = args.max_length or meta.get("max_length", 128)
    batch_size = args.batch_size or meta.get("eval_batch_size", 64)
    return examples, pretrained, max_length, batch_size, Accelerator(cpu=args.device == "cpu")


def evaluate_main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print the metrics of saved weights on a labelled file as one JSON object."""
    from .experiment import score

    args = parse_args(EvaluateArgs, sys.argv[1:] if argv is None else argv)
    try:
        examples, pretrained, max_length, batch_size, accelerator = _load_for_scoring(args, require_labels=True)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    _, metrics = score(pretrained, examples, max_length, batch_size, accelerator)
    metrics["n"] = len(examples)
    print(json.dumps(metrics))
    return metrics


def predict_main(argv: Sequence[str] | None = None) -> Path:
    """Write CLUE-format predictions (with probabilities) for every pair of a file, labelled or not."""
    from .experiment import score, write_predictions

    args = parse_args(PredictArgs, sys.argv[1:] if argv is None else argv)
    try:
        examples, pretrained, max_length, batch_size, accelerator = _load_for_scoring(args, require_labels=False)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    prob_same, _ = score(pretrained, examples, max_length, batch_size, accelerator)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, examples, prob_same)
    print(f"wrote {len(examples)} predictions to {out}", file=sys.stderr)
    return out
