"""``evaluate`` and ``predict``: saved weights (a folder, ``runs:/...`` or ``models:/...``) scored on a file or
one pair, in the same ``key=value`` style as training (see ``arguments``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from .arguments import help_of, parse_args
from .data import DataError


@dataclass
class EvaluateArgs:
    """Metrics (loss, accuracy, F1, AUC) of saved weights on a labelled AFQMC JSON-lines file, as one JSON line."""

    ckpt: str = field(default=MISSING, metadata=help_of(
        "a best_model folder, runs:/<run id>/best_model (a sweep's parent id: its best job) or models:/NAME/VERSION "
        "(also NAME@alias, NAME/latest)"))  # fmt: skip
    file: str = field(default=MISSING, metadata=help_of("a labelled AFQMC JSON-lines file"))
    batch_size: int | None = field(default=None, metadata=help_of("default: what the weights were evaluated with"))
    max_length: int | None = field(default=None, metadata=help_of("default: what the weights were trained with"))
    device: str = field(default="auto", metadata=help_of("auto (a GPU when there is one) or cpu"))
    tracking_uri: str | None = field(default=None, metadata=help_of(
        "the store of runs:/ and models:/ (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"))  # fmt: skip


@dataclass
class PredictArgs(EvaluateArgs):
    """CLUE-format predictions ({"id", "label", "prob"} per line) for a file, or the answer for one pair."""

    file: str | None = field(default=None, metadata=help_of("an AFQMC JSON-lines file, labelled or not (with out=)"))
    out: str | None = field(default=None, metadata=help_of("where to write one prediction line per pair"))
    sentence1: str | None = field(default=None, metadata=help_of("or one pair, answered on stdout (with sentence2=)"))
    sentence2: str | None = field(default=None, metadata=help_of("the pair's second question"))


def _load_for_scoring(args: EvaluateArgs) -> dict:
    """The classifier of ``args.ckpt`` with the max_length and batch size it was trained with."""
    from accelerate import Accelerator

    from .checkpoint import read_meta, recover
    from .data import auto_eval_batch_size, auto_pad_to_multiple_of
    from .fetch import FetchError, local_weights
    from .model import load_pair_classifier, prepare_for_device
    from .tracking import default_uri, resolve_uri

    try:
        ckpt = local_weights(args.ckpt, resolve_uri(args.tracking_uri or default_uri()))
    except FetchError as error:
        raise SystemExit(f"error: {error}") from None
    recover(ckpt)  # a training run killed between the two renames of a best_model swap
    if not (ckpt / "config.json").exists():
        raise SystemExit(
            f"error: ckpt={args.ckpt}: no config.json there; ckpt is a best_model folder written by training"
        )
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
    """``afqmc-evaluate`` / ``python evaluate.py``."""
    from .data import read_pairs
    from .inference import score

    args = parse_args(EvaluateArgs, sys.argv[1:] if argv is None else argv, "afqmc-evaluate")
    try:
        examples = read_pairs(args.file)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    _, metrics = score(examples=examples, **_load_for_scoring(args))
    metrics["n"] = len(examples)
    print(json.dumps(metrics))
    return metrics


def predict_main(argv: Sequence[str] | None = None) -> Path | dict:
    """``afqmc-predict`` / ``python predict.py``."""
    from .data import PairExample, read_pairs
    from .inference import score, write_predictions

    args = parse_args(PredictArgs, sys.argv[1:] if argv is None else argv, "afqmc-predict")
    one_pair = args.sentence1 is not None or args.sentence2 is not None
    if one_pair and not (args.sentence1 and args.sentence2):
        raise SystemExit("error: give both sentence1=... and sentence2=...")
    if not one_pair and not (args.file and args.out):
        raise SystemExit("error: give file=... and out=..., or sentence1=... sentence2=...; see afqmc-predict --help")
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
