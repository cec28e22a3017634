"""Command-line edges: the Hydra config of ``train.py`` becomes typed objects here, and ``evaluate.py`` /
``predict.py`` parse ``key=value`` arguments against typed schemas (so a typo or a wrong type is one
clear line, in the same override syntax as training).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data import DataError
from .masking import Masker, install_log_filter
from .schema import ConfigError, validate

log = logging.getLogger(__name__)
REPO_DIR = Path(__file__).resolve().parent.parent
RESULT_FILE = "result.json"  # written when a run finishes


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
            raise SystemExit(
                f"error: resume={resume}: neither a run's output folder nor the id of an MLflow run in {tracking.uri}"
            ) from None
    if not (folder / ".hydra" / "config.yaml").exists():
        raise SystemExit(f"error: resume={resume}: {folder} has no .hydra/config.yaml; is it a train.py output folder?")
    return folder


def config_of_run(run_id: str, tracking):
    """The config an MLflow run was started with (its ``hydra/config.yaml`` artifact), and the run."""
    import tempfile

    from mlflow.exceptions import MlflowException

    client = tracking.client()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            original = client.get_run(run_id)
            cfg = OmegaConf.load(client.download_artifacts(run_id, "hydra/config.yaml", tmp))
    except (MlflowException, OSError) as err:
        raise SystemExit(
            f"error: rerun={run_id}: no hydra/config.yaml for that run in {tracking.uri} ({str(err).splitlines()[0]})"
        ) from None
    cfg.rerun = None
    return cfg, original


def train_from_config(cfg: DictConfig) -> float:
    """The body of ``train.py``: instantiate every group, then call the typed task.

    With ``resume=...`` the earlier run's own config (its ``.hydra/config.yaml``) is used, so a resumed run
    is the same experiment; it continues in the earlier output folder and MLflow run. With
    ``rerun=<run id>`` the config logged with that MLflow run is started again as a new run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra.utils import instantiate

    hydra_cfg = HydraConfig.get()
    masker = mask_logs(cfg)
    output_dir, resume, rerun = Path(hydra_cfg.runtime.output_dir), cfg.get("resume"), cfg.get("rerun")
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    extra_tags, run_name = {}, None
    if resume and rerun:
        raise SystemExit(
            "error: resume= and rerun= together: resume continues a killed run in its folder, rerun starts a "
            "logged run's config again as a new run; give one of them"
        )
    if resume:
        output_dir = find_run_dir(str(resume), instantiate(cfg.tracking))
        cfg = OmegaConf.load(output_dir / ".hydra" / "config.yaml")
        masker = mask_logs(cfg)  # the run's own config: its secrets
        if (output_dir / RESULT_FILE).exists():
            return report_finished(output_dir, instantiate(cfg.tracking))
        append_log_to(output_dir, masker)
        log.info("resuming %s with its saved config", output_dir)
    elif rerun:
        cfg, original = config_of_run(str(rerun), instantiate(cfg.tracking))
        OmegaConf.save(cfg, output_dir / ".hydra" / "config.yaml")  # what this run really is
        run_name = original.info.run_name
        extra_tags.update({"rerun_of": str(rerun), "hydra.choices": original.data.tags.get("hydra.choices", "{}")})
        ignored = [o for o in hydra_cfg.overrides.task if not o.startswith("rerun=")]
        if ignored:
            log.warning("rerun uses the run's own config; ignoring %s", " ".join(ignored))
    from .experiment import RunInProgress
    from .model import ModelError
    from .tracking import TrackingUnavailable

    try:
        return _train(cfg, hydra_cfg, output_dir, resume, in_sweep, extra_tags, run_name, masker)
    except (ConfigError, DataError, ModelError, TrackingUnavailable, RunInProgress) as err:
        if in_sweep:  # the sweep records this job as failed and goes on
            raise
        raise SystemExit(f"error: {masker(str(err))}") from None  # a clear message, not a traceback


def mask_logs(cfg: DictConfig) -> Masker:
    """The run's secrets, masked from here on in every log line (console and log file)."""
    masker = Masker.from_config(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    install_log_filter(masker)
    return masker


def append_log_to(output_dir: Path, masker: Masker) -> None:
    """A resumed run logs into the run's own log file too (after the earlier processes' lines), so the log
    uploaded with the run tells its whole story. Hydra's own log goes to this process's new folder."""
    root = logging.getLogger()
    hydra_file = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    handler = logging.FileHandler(output_dir / Path(hydra_file.baseFilename if hydra_file else "train.log").name)
    if hydra_file is not None:
        handler.setFormatter(hydra_file.formatter)
    root.addHandler(handler)
    install_log_filter(masker)


def report_finished(output_dir: Path, tracking) -> float:
    """``resume=`` on a run that finished: nothing is trained or rewritten; tracking records its process could
    not deliver (the store was down) are sent now."""
    result = json.loads((output_dir / RESULT_FILE).read_text())
    run_id = result.get("mlflow_run_id")
    pending = tracking.catch_up(run_id, output_dir) if run_id else 0
    behind = f"; {pending} tracking record(s) still wait for the store" if pending else ""
    log.info(
        "%s: this run finished (best dev %s %s at step %s): its results are in that folder and MLflow run %s; "
        "nothing to resume%s",
        output_dir,
        result.get("metric"),
        result.get("best_metric"),
        result.get("best_step"),
        run_id,
        behind,
    )
    return result.get("best_metric")


def _train(
    cfg: DictConfig,
    hydra_cfg,
    output_dir: Path,
    resume,
    in_sweep: bool,
    extra_tags: dict,
    run_name: str | None,
    masker: Masker,
) -> float:
    from hydra.utils import instantiate

    from .experiment import run
    from .sweep import parent_run_id
    from .tracking import flatten, git_state

    validate(cfg)  # before any model is loaded or run opened
    tracking = instantiate(cfg.tracking)
    if not tracking.run_name:
        tracking.run_name = run_name or default_run_name(cfg, hydra_cfg.runtime.choices.get("model"))
    tags = {
        "hydra.overrides": " ".join(masker.override(o) for o in hydra_cfg.overrides.task) or "(none)",
        "hydra.output_dir": str(output_dir),
        "hydra.choices": json.dumps(dict(hydra_cfg.runtime.choices)),
        **git_state(REPO_DIR),
        **extra_tags,
    }
    if in_sweep:
        tags.update({"sweep.dir": str(Path(hydra_cfg.sweep.dir).resolve()), "sweep.job_num": str(hydra_cfg.job.num)})
    return run(
        data=instantiate(cfg.data),
        load_model=instantiate(cfg.model),
        make_optimizer=instantiate(cfg.optim),
        make_scheduler=instantiate(cfg.scheduler),
        trainer=instantiate(cfg.trainer),
        tracking=tracking,
        seed=cfg.seed,
        output_dir=output_dir,
        params=flatten(OmegaConf.to_container(cfg, resolve=True)),
        tags=tags,
        resume=bool(resume),
        parent_run_id=parent_run_id(hydra_cfg.sweep.dir) if in_sweep else None,
        masker=masker,
    )


# ----------------------------------------------------------------------------- evaluate.py / predict.py
@dataclass
class EvaluateArgs:
    """python evaluate.py ckpt=DIR|runs:/ID/best_model|models:/NAME/VERSION file=PATH [batch_size=N] [max_length=N]"""

    ckpt: str = (
        MISSING  # a best_model folder, or an MLflow URI of one (runs:/<run id>/best_model, models:/NAME/VERSION)
    )
    file: str = MISSING  # a labelled AFQMC JSON-lines file
    batch_size: int | None = None  # default: the eval batch size the weights were trained with
    max_length: int | None = None  # default: the max_length the weights were trained with
    device: str = "auto"
    tracking_uri: str | None = None  # for runs:/ and models:/ (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)


@dataclass
class PredictArgs(EvaluateArgs):
    """python predict.py ckpt=... (file=PATH out=PATH | sentence1=TEXT sentence2=TEXT)"""

    file: str | None = None  # an AFQMC JSON-lines file, labelled or not...
    out: str | None = None  # ...and where to write one {"id", "label", "prob"} line per pair
    sentence1: str | None = None  # or one pair, answered on stdout
    sentence2: str | None = None


def resolve_checkpoint(ckpt: str, tracking_uri: str | None) -> Path:
    """A local folder as is; a ``runs:/`` or ``models:/`` URI is downloaded through MLflow into a temporary
    folder (fresh each time: ``models:/NAME/latest`` and aliases move), removed when the process ends."""
    if not ckpt.startswith(("runs:/", "models:/")):
        return Path(ckpt)
    import atexit
    import os
    import shutil
    import tempfile

    import mlflow

    from .tracking import default_uri, resolve_uri

    uri = resolve_uri(tracking_uri or default_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    target = Path(tempfile.mkdtemp(prefix="afqmc_ckpt_"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=ckpt, dst_path=str(target)))
    if downloaded != target:  # runs:/ID/best_model lands in target/best_model
        for item in downloaded.iterdir():
            os.replace(item, target / item.name)
    if (target / "MLmodel").exists():  # an mlflow.transformers model: weights in model/, tokenizer apart
        for part in ("model", "components/tokenizer"):
            for item in (target / part).iterdir():
                os.replace(item, target / item.name)
    return target


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


def _load_for_scoring(args: EvaluateArgs):
    """The classifier of ``args.ckpt`` with the max_length and batch size it was trained with."""
    from accelerate import Accelerator

    from .checkpoint import read_meta, recover
    from .data import auto_eval_batch_size, auto_pad_to_multiple_of
    from .model import load_pair_classifier, prepare_for_device

    ckpt = resolve_checkpoint(args.ckpt, args.tracking_uri)
    recover(ckpt)  # a training run killed between the two renames of a best_model swap
    if not (ckpt / "config.json").exists():
        raise SystemExit(f"error: {args.ckpt}: no config.json; ckpt must be a best_model folder written by train.py")
    meta, accelerator = read_meta(ckpt), Accelerator(cpu=args.device == "cpu")
    device_type = accelerator.device.type
    return dict(
        pretrained=prepare_for_device(load_pair_classifier(str(ckpt)), device_type),
        max_length=args.max_length or meta.get("max_length", 128),
        batch_size=args.batch_size or meta.get("eval_batch_size") or auto_eval_batch_size(device_type),
        pad_to_multiple_of=auto_pad_to_multiple_of(device_type),
        accelerator=accelerator,
    )


def evaluate_main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print the metrics of saved weights on a labelled file as one JSON object."""
    from .data import read_pairs
    from .inference import score

    args = parse_args(EvaluateArgs, sys.argv[1:] if argv is None else argv)
    try:
        examples = read_pairs(args.file)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    _, metrics = score(examples=examples, **_load_for_scoring(args))
    metrics["n"] = len(examples)
    print(json.dumps(metrics))
    return metrics


def predict_main(argv: Sequence[str] | None = None) -> Path | dict:
    """CLUE-format predictions (with probabilities) for a file, labelled or not, or for one pair."""
    from .data import PairExample, read_pairs
    from .inference import score, write_predictions

    args = parse_args(PredictArgs, sys.argv[1:] if argv is None else argv)
    one_pair = args.sentence1 is not None or args.sentence2 is not None
    if one_pair and not (args.sentence1 and args.sentence2):
        raise SystemExit("error: give both sentence1=... and sentence2=...")
    if not one_pair and not (args.file and args.out):
        raise SystemExit(
            f"error: give file=... and out=..., or sentence1=... sentence2=...\nusage: {PredictArgs.__doc__}"
        )
    try:
        examples = (
            [PairExample(args.sentence1, args.sentence2, None, 0)]
            if one_pair
            else read_pairs(args.file, require_labels=False)
        )
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    prob_same, _ = score(examples=examples, **_load_for_scoring(args))
    if one_pair:
        answer = {"label": str(int(prob_same[0] >= 0.5)), "prob": round(float(prob_same[0]), 6)}
        print(json.dumps(answer))
        return answer
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, examples, prob_same)
    print(f"wrote {len(examples)} predictions to {out}", file=sys.stderr)
    return out
