"""``evaluate`` and ``predict``: saved weights (a folder, ``runs:/...`` or ``models:/...``) scored on a file or
one pair, in the same ``key=value`` style as training (see ``arguments``).

``ckpt=A,B,C`` is an ensemble: each member scores the pairs with its own max_length, and the mean of their
probabilities is the answer, predicted at the mean of their thresholds (``threshold=`` overrides it).
"""

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
        "(also NAME@alias, NAME/latest); several, comma-separated: an ensemble (their mean probability)"))  # fmt: skip
    file: str = field(default=MISSING, metadata=help_of("a labelled AFQMC JSON-lines file"))
    batch_size: int | None = field(default=None, metadata=help_of("default: what the weights were evaluated with"))
    max_length: int | None = field(default=None, metadata=help_of("default: what the weights were trained with"))
    device: str = field(default="auto", metadata=help_of("auto (a GPU when there is one) or cpu"))
    threshold: float | None = field(default=None, metadata=help_of(
        "predict same when prob >= threshold (default: the one saved with the weights, else 0.5)"))  # fmt: skip
    tracking_uri: str | None = field(default=None, metadata=help_of(
        "the store of runs:/ and models:/ (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"))  # fmt: skip


@dataclass
class PredictArgs(EvaluateArgs):
    """CLUE-format predictions ({"id", "label", "prob"} per line) for a file, or the answer for one pair."""

    file: str | None = field(default=None, metadata=help_of("an AFQMC JSON-lines file, labelled or not (with out=)"))
    out: str | None = field(default=None, metadata=help_of("where to write one prediction line per pair"))
    sentence1: str | None = field(default=None, metadata=help_of("or one pair, answered on stdout (with sentence2=)"))
    sentence2: str | None = field(default=None, metadata=help_of("the pair's second question"))


def _load_member(ckpt_uri: str, args: EvaluateArgs, accelerator) -> dict:
    """One model of ``ckpt`` with the max_length, batch size and threshold it was trained with."""
    from .checkpoint import read_meta, recover
    from .data import auto_eval_batch_size, auto_pad_to_multiple_of
    from .fetch import FetchError, local_weights
    from .model import load_pair_classifier, prepare_for_device
    from .tracking import default_uri, resolve_uri

    try:
        ckpt = local_weights(ckpt_uri, resolve_uri(args.tracking_uri or default_uri()))
    except FetchError as error:
        raise SystemExit(f"error: {error}") from None
    recover(ckpt)  # a training run killed between the two renames of a best_model swap
    if not (ckpt / "config.json").exists():
        raise SystemExit(
            f"error: ckpt={ckpt_uri}: no config.json there; ckpt is a best_model folder written by training"
        )
    meta, device_type = read_meta(ckpt), accelerator.device.type
    return dict(
        pretrained=prepare_for_device(load_pair_classifier(str(ckpt)), device_type),
        max_length=args.max_length or meta.get("max_length", 128),
        batch_size=args.batch_size or meta.get("eval_batch_size") or auto_eval_batch_size(device_type),
        pad_to_multiple_of=auto_pad_to_multiple_of(device_type),
        threshold=meta.get("threshold", 0.5),
    )


def score_with(args: EvaluateArgs, examples: list) -> tuple:
    """Probabilities (an ensemble's mean), the threshold, and the metrics when the pairs are labelled."""
    import numpy as np
    from accelerate import Accelerator

    from .inference import score
    from .metrics import classification_metrics, log_loss

    accelerator = Accelerator(cpu=args.device == "cpu")
    members = [_load_member(c.strip(), args, accelerator) for c in args.ckpt.split(",") if c.strip()]
    threshold = args.threshold if args.threshold is not None else float(np.mean([m.pop("threshold") for m in members]))
    scored = [score(examples=examples, accelerator=accelerator, threshold=threshold,
                    **{k: v for k, v in m.items() if k != "threshold"}) for m in members]  # fmt: skip
    if len(scored) == 1:
        return scored[0][0], threshold, scored[0][1]
    prob = np.mean([p for p, _ in scored], axis=0)
    if examples[0].label is None:
        return prob, threshold, None
    labels = np.array([e.label for e in examples])
    return prob, threshold, classification_metrics(labels, prob, log_loss(labels, prob), threshold)


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    """``afqmc-evaluate`` / ``python evaluate.py``. Returns None: an installed script exits with what its
    entry point returns (``sys.exit(main())``), so anything else would read as a failure."""
    evaluate(parse_args(EvaluateArgs, sys.argv[1:] if argv is None else argv, "afqmc-evaluate"))


def predict_main(argv: Sequence[str] | None = None) -> None:
    """``afqmc-predict`` / ``python predict.py``. Returns None (see ``evaluate_main``)."""
    predict(parse_args(PredictArgs, sys.argv[1:] if argv is None else argv, "afqmc-predict"))


def evaluate(args: EvaluateArgs) -> dict[str, float]:
    """The metrics of ``args.ckpt`` on ``args.file``, printed as one JSON line and returned."""
    from .data import read_pairs

    try:
        examples = read_pairs(args.file)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    _, threshold, metrics = score_with(args, examples)
    metrics.update(n=len(examples), threshold=threshold)
    print(json.dumps(metrics))
    return metrics


def predict(args: PredictArgs) -> Path | dict:
    """The answer for one pair (printed as JSON) or the predictions file written for ``args.file``."""
    from .data import PairExample, read_pairs
    from .inference import write_predictions

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
    prob_same, threshold, _ = score_with(args, examples)
    if one_pair:
        answer = {"label": str(int(prob_same[0] >= threshold)), "prob": round(float(prob_same[0]), 6)}
        print(json.dumps(answer))
        return answer
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, examples, prob_same, threshold=threshold)
    print(f"wrote {len(examples)} predictions to {out}", file=sys.stderr)
    return out
