"""One training run as a plain typed function: validate data, open the MLflow run, fit, score the best
weights again, log everything, close the run with the right status.

It never sees a DictConfig (Hydra stays in ``cli``), so it can be called from a notebook or a test with
ordinary objects. The order matters: data is read and checked *before* the MLflow run opens or a model
loads (a bad line costs a second and leaves no half-open run); once the run is open, any exception
closes it as FAILED and Ctrl-C as KILLED.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .data import AfqmcData, PairExample, encode_pairs, make_loader
from .loop import (LAST_CHECKPOINT, TrainerConfig, build_accelerator, cpu_has_native_bf16, eval_in_bf16, fit,
                   predict)
from .metrics import classification_metrics
from .model import Pretrained, load_pair_classifier
from .plots import save_dev_plots
from .tracking import MlflowTracking, Run

log = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run_id"  # in the output dir: lets resume=<dir> find the MLflow run


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices) RNGs; the data order is seeded separately by the sampler."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def system_tags(accelerator) -> dict[str, str]:
    """Library versions and hardware, so a run can be compared and reproduced."""
    import platform

    import accelerate
    import transformers

    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"sys.python": platform.python_version(), "sys.torch": torch.__version__,
            "sys.transformers": transformers.__version__, "sys.accelerate": accelerate.__version__,
            "sys.device": f"{device.type}: {name}", "sys.num_processes": str(accelerator.num_processes),
            "sys.torch_threads": str(torch.get_num_threads()), "sys.cpu_native_bf16": str(cpu_has_native_bf16())}


def score(pretrained: Pretrained, examples: list[PairExample], max_length: int, batch_size: int,
          accelerator) -> tuple[np.ndarray, dict[str, float] | None]:
    """Probabilities of "same meaning" for ``examples`` (file order) and, if labelled, their metrics."""
    split = encode_pairs(examples, pretrained.tokenizer, max_length)
    loader = make_loader(split, pretrained.tokenizer.pad_token_id, batch_size, train=False)
    model, loader = accelerator.prepare(pretrained.model, loader)
    prob_same, loss = predict(model, loader, accelerator)
    metrics = classification_metrics(split.labels.numpy(), prob_same, loss) if split.labels is not None else None
    return prob_same, metrics


def write_predictions(path: Path, examples: list[PairExample], prob_same: np.ndarray,
                      with_sentences: bool = False) -> None:
    """CLUE submission lines ``{"id", "label": "0"|"1"}`` plus the probability (and optionally the pair)."""
    with open(path, "w", encoding="utf-8") as out:
        for example, prob in zip(examples, prob_same):
            row = {"id": example.id, "label": str(int(prob >= 0.5)), "prob": round(float(prob), 6)}
            if with_sentences:
                row.update(sentence1=example.sentence1, sentence2=example.sentence2, gold=example.label)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def score_best(best_dir: Path, examples: dict, data: AfqmcData, accelerator):
    """Metrics of the saved best weights on dev (and a labelled test file), and their probabilities.
    The saved folder, reloaded, is what users get: it is scored, not the in-memory model."""
    best = load_pair_classifier(str(best_dir))
    prob_dev, dev_metrics = score(best, examples["dev"], data.max_length, data.eval_batch_size, accelerator)
    final = {f"final/dev_{k}": v for k, v in dev_metrics.items()}
    prob_test = None
    if examples.get("test") and data.score_test:
        prob_test, test_metrics = score(best, examples["test"], data.max_length, data.eval_batch_size, accelerator)
        final.update({f"final/test_{k}": v for k, v in (test_metrics or {}).items()})
    return final, prob_dev, prob_test


def write_outputs(output_dir: Path, examples: dict, prob_dev, prob_test, result, final: dict, metric: str,
                  run_id: str | None, run_name: str) -> None:
    """Predictions, result.json and the dev plots in the run's output folder."""
    write_predictions(output_dir / "dev_predictions.jsonl", examples["dev"], prob_dev, with_sentences=True)
    if prob_test is not None:
        write_predictions(output_dir / "test_predictions.jsonl", examples["test"], prob_test)
    (output_dir / "result.json").write_text(json.dumps(
        {"best_metric": result.best_metric, "metric": metric, "best_step": result.best_step, "steps": result.steps,
         **final, "speed": result.speed, "mlflow_run_id": run_id}, indent=2) + "\n")
    save_dev_plots(np.array([e.label for e in examples["dev"]]), prob_dev, output_dir / "plots", title=run_name)
    log.info("best dev %s %.4f at step %d; final %s", metric, result.best_metric, result.best_step,
             {k: round(v, 4) for k, v in final.items()})


def log_outputs(mlflow_run: Run, tracking: MlflowTracking, output_dir: Path, best_dir: Path) -> None:
    """The run's files as MLflow artifacts; the best weights as artifacts, a flavour model, a registry version."""
    for name in ("dev_predictions.jsonl", "test_predictions.jsonl", "result.json"):
        mlflow_run.log_artifact(output_dir / name)
    for folder, artifact_path in (("plots", "plots"), ("profile", "profile"), (".hydra", "hydra")):
        mlflow_run.log_artifacts(output_dir / folder, artifact_path)  # profile/: when trainer.profile_steps > 0
    if tracking.log_weights or tracking.register_as:
        mlflow_run.log_artifacts(best_dir, "best_model")
    if tracking.log_model:  # registered (if asked) as the flavour model, usable without this project
        mlflow_run.log_transformers_model(best_dir, register_as=tracking.register_as)
    elif tracking.register_as:
        mlflow_run.register(tracking.register_as, "best_model")


def run(*, data: AfqmcData, load_model: Callable[[], Pretrained], make_optimizer: Callable,
        make_scheduler: Callable, trainer: TrainerConfig, tracking: MlflowTracking, seed: int,
        output_dir: Path, params: Mapping[str, str], tags: Mapping[str, str], base_dir: str | None = None,
        parent_run_id: str | None = None, resume: bool = False) -> float:
    """Train, evaluate, track; return the best dev value of ``trainer.metric`` (what sweepers optimise).

    ``resume=True``: ``output_dir`` is an earlier run's folder; training continues from its last checkpoint
    (or from the start if it had none) inside the same MLflow run."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    examples = data.load()  # validated before anything heavy happens
    seed_everything(seed)
    accelerator = build_accelerator(trainer)
    if accelerator.num_processes > 1:  # every process writes and reads the main process's folder
        from accelerate.utils import broadcast_object_list

        output_dir = Path(broadcast_object_list([str(output_dir)])[0])
    tags = {**tags, **system_tags(accelerator),
            "sys.eval_precision": "bf16" if eval_in_bf16(trainer, accelerator.device) else "fp32"}
    run_id_file = output_dir / RUN_ID_FILE
    if not accelerator.is_main_process:
        mlflow_run = Run(None, None)
    elif resume and run_id_file.exists() and run_id_file.read_text().strip():
        mlflow_run = tracking.reopen(run_id_file.read_text().strip(), base_dir=base_dir)
    else:
        mlflow_run = tracking.start(params, tags, base_dir=base_dir, parent_run_id=parent_run_id)
        run_id_file.write_text(f"{mlflow_run.run_id or ''}\n")
    status = "FAILED"
    try:
        pretrained = load_model()
        if data.max_length > pretrained.max_positions:
            raise ValueError(f"data.max_length={data.max_length}: the model takes at most {pretrained.max_positions} "
                             f"positions; set data.max_length<={pretrained.max_positions}")
        splits = {name: encode_pairs(rows, pretrained.tokenizer, data.max_length)
                  for name, rows in examples.items() if name != "test"}
        resume_from_checkpoint = resume and (output_dir / LAST_CHECKPOINT / "trainer_state.pt").exists()
        result = fit(pretrained, data, splits, make_optimizer, make_scheduler, trainer, seed, output_dir,
                     accelerator, mlflow_run.log_metrics, on_checkpoint=mlflow_run.flush,
                     resume=resume_from_checkpoint)

        final, prob_dev, prob_test = score_best(result.best_dir, examples, data, accelerator)
        mlflow_run.log_metrics({**final, **{f"speed/{k}": v for k, v in result.speed.items()}}, step=result.steps)
        if accelerator.is_main_process:
            write_outputs(output_dir, examples, prob_dev, prob_test, result, final, trainer.metric, mlflow_run.run_id,
                          tracking.run_name or output_dir.name)
            log_outputs(mlflow_run, tracking, output_dir, result.best_dir)
        if accelerator.is_main_process and not trainer.keep_last_checkpoint:
            shutil.rmtree(output_dir / LAST_CHECKPOINT, ignore_errors=True)  # a finished run needs no resume
        status = "FINISHED"
        return result.best_metric
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if accelerator.is_main_process:
            for logfile in output_dir.glob("*.log"):
                mlflow_run.log_artifact(logfile)
        mlflow_run.end(status)
        if accelerator.num_processes > 1:
            accelerator.end_training()  # destroys the process group: exiting with it alive can abort (SIGABRT)
