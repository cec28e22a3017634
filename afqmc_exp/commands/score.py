"""``evaluate`` and ``predict``: saved weights (a folder, ``runs:/...`` or ``models:/...``) scored on a file or
one pair, in the same ``key=value`` style as training (see ``arguments``).

A file is read, scored and written in chunks of ``CHUNK`` pairs, so memory stays flat whatever its size and
the predictions file grows as the pairs are scored. It is read the way the weights' task reads its files
(the format and fields saved with them, ``afqmc_exp.json``), unless ``format=``/``text_a=``... say otherwise,
and its labels must be the weights' own. Answers are in the one format every way of predicting uses
(``answers.answer``).

``ckpt=A,B,C`` is an ensemble: each member scores the pairs with its own max_length, and the mean of their
probabilities is the answer, predicted at the mean of their thresholds (``threshold=`` overrides it). Its
members must answer with the same labels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from ..data import DataError, Pair, PairReader, ReadSpec
from .arguments import help_of, parse_args

CHUNK = 4096  # pairs read, scored and written at a time


@dataclass
class EvaluateArgs:
    """Metrics (loss, accuracy, macro-F1, per-label F1; binary tasks also F1 and AUC) of saved weights on a
    labelled file, as one JSON line."""

    ckpt: str = field(default=MISSING, metadata=help_of(
        "a best_model folder, runs:/<run id>/best_model (a sweep's parent id: its best job) or models:/NAME/VERSION "
        "(also NAME@alias, NAME/latest); several, comma-separated: an ensemble (their mean probability)"))  # fmt: skip
    file: str = field(default=MISSING, metadata=help_of("a labelled file of the weights' task"))
    batch_size: int | None = field(default=None, metadata=help_of("default: what the weights were evaluated with"))
    max_length: int | None = field(default=None, metadata=help_of("default: what the weights were trained with"))
    device: str = field(default="auto", metadata=help_of("auto (a GPU when there is one) or cpu"))
    threshold: float | None = field(default=None, metadata=help_of(
        "binary tasks: predict the positive label when its prob >= threshold (default: the one saved with the "
        "weights, else 0.5)"))  # fmt: skip
    tracking_uri: str | None = field(default=None, metadata=help_of(
        "the store of runs:/ and models:/ (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"))  # fmt: skip
    format: str | None = field(default=None, metadata=help_of(
        "jsonl, tsv, csv, json_array or parquet (default: how the weights' task reads its files)"))  # fmt: skip
    text_a: str | None = field(default=None, metadata=help_of("the first sentence's column (name, or TSV position)"))
    text_b: str | None = field(default=None, metadata=help_of("the second sentence's column"))
    label_column: str | None = field(default=None, metadata=help_of("the label's column"))
    id_column: str | None = field(default=None, metadata=help_of("the id's column"))


@dataclass
class PredictArgs(EvaluateArgs):
    """Predictions ({"id", "label", "prob", "probs"} per line, CLUE's fields first) for a file, or the answer for
    one pair."""

    file: str | None = field(default=None, metadata=help_of("a file of the weights' task, labelled or not (with out=)"))
    out: str | None = field(default=None, metadata=help_of("where to write one prediction line per pair"))
    sentence1: str | None = field(default=None, metadata=help_of("or one pair, answered on stdout (with sentence2=)"))
    sentence2: str | None = field(default=None, metadata=help_of("the pair's second sentence"))


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    """``afqmc-evaluate`` / ``python evaluate.py``. Returns None: an installed script exits with what its
    entry point returns (``sys.exit(main())``), so anything else would read as a failure."""
    with saying_steps():
        evaluate(parse_args(EvaluateArgs, sys.argv[1:] if argv is None else argv, "afqmc-evaluate"))


def predict_main(argv: Sequence[str] | None = None) -> None:
    """``afqmc-predict`` / ``python predict.py``. Returns None (see ``evaluate_main``)."""
    with saying_steps():
        predict(parse_args(PredictArgs, sys.argv[1:] if argv is None else argv, "afqmc-predict"))


class _Stderr(logging.Handler):
    """Lines to whatever ``sys.stderr`` is when they are said (a test's capture, then the terminal again)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


@contextlib.contextmanager
def saying_steps():
    """This project's own info lines (which weights were taken, e.g. a sweep parent's best job) on stderr while a
    command runs; stdout keeps only the answers."""
    logger, handler = logging.getLogger("afqmc_exp"), _Stderr()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ------------------------------------------------------------------------------------------ the weights
@dataclass
class Member:
    """One model of ``ckpt``, with how it was trained: its max length, batch size, threshold, labels, files."""

    model: object
    tokenizer: object
    max_length: int
    batch_size: int
    pad_to_multiple_of: int
    threshold: float
    labels: list[str]
    meta: dict


def weights_folder(ckpt_uri: str, args: EvaluateArgs) -> Path:
    """The local folder ``ckpt`` names, or one line saying why it is not one."""
    from ..files import recover
    from ..run_folder import RunFolder
    from ..tracking.stored_weights import FetchError, local_weights

    try:
        ckpt = local_weights(ckpt_uri, args.tracking_uri)
    except FetchError as error:
        raise SystemExit(f"error: {error}") from None
    recover(ckpt)  # a training run killed between the two renames of a best_model swap
    if not ckpt.is_dir():
        raise SystemExit(f"error: ckpt={ckpt_uri}: no such folder")
    unreadable = cannot_read(ckpt)
    if unreadable is not None:
        owner, mode = _owner(unreadable), oct(stat.S_IMODE(unreadable.stat().st_mode))
        raise SystemExit(f"error: ckpt={ckpt_uri}: {unreadable} cannot be read by this user (it is {owner}'s, mode "
                         f"{mode}); ask {owner} to run: chmod -R a+rX {shlex.quote(str(ckpt))}")  # fmt: skip
    from ..model import PICKLES, pickle_only

    if pickle_only(ckpt):
        raise SystemExit(f"error: ckpt={ckpt_uri}: its weights are only pickles ({', '.join(PICKLES)}), which can "
                         "run code when loaded; convert them to safetensors")  # fmt: skip
    if not (ckpt / "config.json").exists():
        inside = RunFolder(ckpt).best_model
        hint = f"it is a run folder: its weights are ckpt={inside}" if (inside / "config.json").exists() else \
            "ckpt is a best_model folder written by training"  # fmt: skip
        raise SystemExit(f"error: ckpt={ckpt_uri}: no config.json there; {hint}")
    return ckpt


def cannot_read(folder: Path) -> Path | None:
    """The first file or folder in ``folder`` this user may not read (weights written for their owner only)."""
    if not os.access(folder, os.R_OK | os.X_OK):
        return folder
    return next((p for p in sorted(folder.rglob("*")) if not os.access(p, os.R_OK)), None)


def _owner(path: Path) -> str:
    try:
        return path.owner()
    except (KeyError, OSError):  # a user id with no name here (another machine's, over NFS)
        return f"user {path.stat().st_uid}"


def load_member(ckpt_uri: str, args: EvaluateArgs, accelerator) -> Member:
    from ..data import auto_eval_batch_size, auto_pad_to_multiple_of
    from ..model import label_names, load_pair_classifier, prepare_for_device
    from ..training.best_weights import read_facts
    from ..weights_facts import DEFAULTS, FactsError

    ckpt = weights_folder(ckpt_uri, args)
    try:
        meta, device_type = read_facts(ckpt), accelerator.device.type
    except FactsError as error:
        raise SystemExit(f"error: {error}") from None
    pretrained = prepare_for_device(load_pair_classifier(str(ckpt)), device_type)
    return Member(
        model=accelerator.prepare(pretrained.model),
        tokenizer=pretrained.tokenizer,
        max_length=args.max_length or meta.get("max_length", DEFAULTS["max_length"]),
        batch_size=args.batch_size or meta.get("eval_batch_size") or auto_eval_batch_size(device_type),
        pad_to_multiple_of=auto_pad_to_multiple_of(device_type),
        threshold=meta.get("threshold", DEFAULTS["threshold"]),
        labels=[str(label) for label in meta.get("labels") or label_names(pretrained.model.config)],
        meta=meta,
    )


class Scorer:
    """The members of ``args.ckpt``, scoring chunks of pairs: the mean of their class probabilities."""

    def __init__(self, args: EvaluateArgs):
        from ..training.hardware import build_accelerator

        for key, least in (("batch_size", 1), ("max_length", 8)):
            value = getattr(args, key)
            if value is not None and value < least:
                raise SystemExit(f"error: {key}={value}: must be >= {least}")
        self.args, self.accelerator = args, build_accelerator(args.device)  # training's kernels (TF32, attention)
        self.members = [load_member(c.strip(), args, self.accelerator) for c in args.ckpt.split(",") if c.strip()]
        self.labels = self.members[0].labels
        if any(m.labels != self.labels for m in self.members):
            shown = "; ".join(", ".join(m.labels) for m in self.members)
            raise SystemExit(f"error: ckpt={args.ckpt}: the members answer with different labels ({shown})")
        saved = float(np.mean([m.threshold for m in self.members]))
        self.threshold = args.threshold if args.threshold is not None else saved

    def spec(self) -> ReadSpec:
        """How a file is read: as the first member's task reads its files, with the arguments' changes."""
        from ..data.formats import fields_tuple
        from ..data.task import AFQMC_FIELDS

        meta, args = self.members[0].meta, self.args
        given = {"text_a": args.text_a, "text_b": args.text_b, "label": args.label_column, "id": args.id_column}
        fields = {**meta.get("fields", AFQMC_FIELDS), **{k: _column(v) for k, v in given.items() if v is not None}}
        return ReadSpec(args.format or meta.get("format", "jsonl"), fields_tuple(fields), tuple(self.labels),
                        tuple(meta.get("drop_labels", ())))  # fmt: skip

    def __call__(self, pairs: list[Pair]) -> tuple[np.ndarray, float]:
        """Class probabilities of ``pairs`` (the members' mean) and the mean loss (NaN when unlabelled)."""
        from ..data import Split, encode_pairs, make_loader
        from ..training.inference import predict

        scored = []
        for m in self.members:
            split = Split.of_pairs(pairs, encode_pairs(pairs, m.tokenizer, m.max_length))
            loader = make_loader(split, m.tokenizer.pad_token_id, m.batch_size, train=False,
                                 pad_to_multiple_of=m.pad_to_multiple_of)  # fmt: skip
            scored.append(predict(m.model, self.accelerator.prepare(loader), self.accelerator))
        if len(scored) == 1:
            return scored[0]
        probs = np.mean([p for p, _ in scored], axis=0)
        if pairs[0].label is None:
            return probs, float("nan")
        from ..metrics import log_loss

        return probs, log_loss([p.label for p in pairs], probs)


def _column(value: str) -> str | int:
    """A column named on the command line: a TSV position is a number."""
    return int(value) if value.isdigit() else value


# ------------------------------------------------------------------------------------------ the commands
def evaluate(args: EvaluateArgs) -> dict[str, float]:
    """The metrics of ``args.ckpt`` on ``args.file``, printed as one JSON line and returned."""
    from ..data.token_cache import chunks
    from ..metrics import classification_metrics

    scorer = Scorer(args)
    labels, probs, loss_sum = [], [], 0.0
    try:
        for chunk in chunks(PairReader(args.file, scorer.spec(), require_labels=True), CHUNK):
            chunk_probs, loss = scorer(chunk)
            labels.append(np.array([p.label for p in chunk], dtype=np.int64))
            probs.append(chunk_probs)
            loss_sum += loss * len(chunk)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    labels, probs = np.concatenate(labels), np.concatenate(probs)
    metrics = classification_metrics(labels, probs, loss_sum / len(labels), scorer.threshold, scorer.labels)
    metrics["n"] = len(labels)
    if len(scorer.labels) == 2:
        metrics["threshold"] = scorer.threshold
    print(json.dumps(metrics))
    return metrics


def predict(args: PredictArgs) -> Path | dict:
    """The answer for one pair (printed as JSON) or the predictions file written for ``args.file``."""
    from ..answers import answer

    one_pair = args.sentence1 is not None or args.sentence2 is not None
    if one_pair and not (args.sentence1 and args.sentence2):
        raise SystemExit("error: give both sentence1=... and sentence2=...")
    if not one_pair and not (args.file and args.out):
        raise SystemExit("error: give file=... and out=..., or sentence1=... sentence2=...; see afqmc-predict --help")
    if not one_pair:
        check_out(args)
    scorer = Scorer(args)
    if one_pair:
        probs, _ = scorer([Pair(args.sentence1, args.sentence2)])
        reply = answer(probs[0], scorer.labels, scorer.threshold)
        print(json.dumps(reply, ensure_ascii=False))
        return reply
    return predict_file(args, scorer)


def check_out(args: PredictArgs) -> None:
    """``out`` names a file predict may write: not the input, not a folder, nothing but earlier predictions."""
    out = Path(args.out)
    if out.resolve() == Path(args.file).resolve():
        raise SystemExit(f"error: out={args.out} is the input file itself; write the predictions elsewhere")
    if out.is_dir():
        raise SystemExit(f"error: out={args.out}: is a folder; name the file to write, e.g. "
                         f"out={out / 'predictions.jsonl'}")  # fmt: skip
    if out.exists() and not out.is_file():  # not even read: a pipe would block; nor replaced: /dev/null as root
        raise SystemExit(f"error: out={args.out}: is not a file (a device or a pipe), which predict cannot replace "
                         "whole; name a file to write")  # fmt: skip
    if out.exists() and not is_predictions_file(out):
        raise SystemExit(f"error: out={args.out}: exists and is not a predictions file (afqmc-predict replaces only "
                         "its own); give another out=, or move that file away")  # fmt: skip


def is_predictions_file(path: Path) -> bool:
    """Empty, or its first line is one of ours (``{"id", "label", "prob", "probs"}``): a blank one is not."""
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline()
        return first == "" or {"label", "prob", "probs"} <= set(json.loads(first))
    except (OSError, ValueError, TypeError):
        return False


def predict_file(args: PredictArgs, scorer: Scorer) -> Path:
    """Predictions for ``args.file`` written chunk by chunk beside ``out``, which they replace once every pair is
    scored (``files.replaced_file``): a bad line or a kill halfway leaves an earlier ``out`` as it was."""
    from ..data.token_cache import chunks
    from ..files import replaced_file
    from ..training.inference import prediction_lines

    out, written = Path(args.out), 0
    try:
        reader = PairReader(args.file, scorer.spec(), require_labels=False)
        with replaced_file(out) as lines:
            for chunk in chunks(reader, CHUNK):
                probs, _ = scorer(chunk)
                lines.writelines(prediction_lines(chunk, probs, scorer.labels, scorer.threshold))
                lines.flush()
                written += len(chunk)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {written} predictions to {out}", file=sys.stderr)
    return out
