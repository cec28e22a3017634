"""The train command's config, checked before anything is created or loaded: one clear line per mistake.

Two checks, in the order a command meets them:

* **The command line, before Hydra runs it** (:func:`check_command_line`). Hydra answers a misspelt key
  (``optim.lrr=1``) with "To append to your config use +optim.lrr=1", which sends users the wrong way, and it
  creates the run's output folder before any check of ours. So the command's config is composed once here, with
  Hydra's own compose API (a sweep's first values stand for it): an unknown key is one line with the closest known
  one, and the whole config is validated (:func:`validate`) before Hydra makes a folder. ``resume``/``rerun``
  configs come from elsewhere and are checked when loaded; anything this check does not understand is left to
  Hydra.

* **The composed config** (:func:`validate`), also for ``resume``/``rerun`` configs when they are loaded. Every
  group is built from a ``_target_`` (a function or dataclass with typed parameters), so the target's signature
  *is* the schema: a key it does not take is a typo, a value that does not fit its annotation is a wrong type, and
  an option with a fixed set of values says so with ``Literal[...]`` (``scheduler.name``, ``optim.implementation``,
  ``trainer.metric``...), which is the only list of them. No parallel set of schema classes to keep in sync. On top
  of that, ``RULES`` holds the ranges that types cannot say (a positive learning rate, at least one epoch...). The
  model's position limit is read from its config.json alone (no weights) where that is available locally or cached.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..metrics import BINARY_ONLY
from ..model import model_problems
from ..tracking.masking import Masker
from ..tracking.store import store_problems
from .arguments import closest


class ConfigError(ValueError):
    """The composed config cannot run; one line per problem, each naming the key and the fix."""


def _positive(v):
    return v is not None and math.isfinite(v) and v > 0


def _at_least_one_or_null(v):
    return v is None or v >= 1


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optim.lr": (_positive, "must be > 0, e.g. optim.lr=2e-5"),
    "optim.eps": (_positive, "must be > 0"),
    "optim.weight_decay": (lambda v: math.isfinite(v) and v >= 0, "must be >= 0 and finite, e.g. 0.01"),
    "optim.betas": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(0 <= b < 1 for b in v),
        "must be two numbers in [0, 1), e.g. optim.betas=[0.9,0.999]",
    ),
    "scheduler.warmup_ratio": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "trainer.epochs": (lambda v: v >= 1, "must be >= 1"),
    "trainer.max_steps": (_at_least_one_or_null, "must be >= 1, or null for no cap"),
    "trainer.grad_accumulation": (lambda v: v >= 1, "must be >= 1"),
    "trainer.max_grad_norm": (lambda v: v is None or v > 0, "must be > 0, or null for no clipping"),
    "trainer.eval_every": (_at_least_one_or_null, "must be >= 1, or null to evaluate once per epoch"),
    "trainer.patience": (_at_least_one_or_null, "must be >= 1, or null for no early stopping"),
    "trainer.log_every": (lambda v: v >= 1, "must be >= 1"),
    "trainer.checkpoint_every": (_at_least_one_or_null, "must be >= 1, or null"),
    "trainer.ema_decay": (lambda v: v is None or 0 < v < 1, "must be in (0, 1), e.g. 0.999, or null for no EMA"),
    "trainer.threshold": (lambda v: v == "tune" or 0 < v < 1, "must be in (0, 1), or tune"),
    "regularizer.epsilon": (lambda v: v is None or v > 0, "must be > 0, e.g. regularizer.epsilon=1.0"),
    "regularizer.alpha": (lambda v: v is None or v >= 0, "must be >= 0"),
    "regularizer.steps": (lambda v: v is None or v >= 1, "must be >= 1"),
    "optim.layer_decay": (lambda v: v is None or 0 < v <= 1, "must be in (0, 1], e.g. 0.9, or null"),
    "optim.head_lr": (lambda v: v is None or v > 0, "must be > 0, or null for optim.lr"),
    "model.name_or_path": (
        lambda v: isinstance(v, str) and v.strip() not in ("", "???"),
        "must name a Hub id or a local folder, e.g. model.name_or_path=bert-base-chinese",
    ),
    "data.dir": (
        lambda v: isinstance(v, str) and v.strip() not in ("", "???"),
        "must name the folder with the task's files, e.g. data.dir=../shared/data/afqmc",
    ),
    "data.labels": (
        lambda v: isinstance(v, list) and len(v) >= 2 and len({str(x) for x in v}) == len(v),
        "must list at least two different labels, as the files write them, in class-id order, e.g. "
        "data.labels=[different,same]",
    ),
    "data.train_limit": (_at_least_one_or_null, "must be >= 1, or null for every pair"),
    "data.dev_limit": (_at_least_one_or_null, "must be >= 1, or null for every pair"),
    "data.test_limit": (_at_least_one_or_null, "must be >= 1, or null for every pair"),
    "data.max_length": (lambda v: v >= 8, "must be >= 8"),
    "data.batch_size": (lambda v: v >= 1, "must be >= 1"),
    "data.eval_batch_size": (lambda v: v == "auto" or v >= 1, "must be >= 1, or auto"),
    "data.pad_to_multiple_of": (lambda v: v == "auto" or v >= 1, "must be >= 1 (1: no rounding), or auto"),
    "data.group_batches": (lambda v: v >= 1, "must be >= 1 (1 = plain shuffling)"),
    "data.folds": (lambda v: v is None or v >= 2, "must be >= 2, or null for the given train/dev split"),
    "seed": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
        "must be an integer in [0, 2**32) (NumPy's seeds), e.g. seed=42",
    ),
}
GROUPS = ("data", "model", "optim", "scheduler", "regularizer", "trainer", "tracking")


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return any(value == allowed and type(value) is type(allowed) for allowed in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin in (tuple, list) or annotation in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True  # richer annotations are left to the target itself


def _expected(annotation: Any) -> str:
    """What a value must be, in words: "must be one of a, b", "expected int", "expected int, or one of auto"."""
    if typing.get_origin(annotation) is typing.Literal:
        return "must be one of " + ", ".join(map(str, typing.get_args(annotation)))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arms = [arm for arm in typing.get_args(annotation) if arm is not type(None)]
        if len(arms) > 1:
            words = [_expected(arm).removeprefix("must be ").removeprefix("expected ") for arm in arms]
            return "expected " + ", or ".join(words)
    return "expected " + (getattr(annotation, "__name__", None) or str(annotation).replace("typing.", ""))


def check_group(group: str, node: dict) -> list[str]:
    """Keys and types of one group against its ``_target_``'s signature."""
    target = get_object(node["_target_"])
    function = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(function)
    parameters = {
        name: p
        for name, p in inspect.signature(target).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    problems = []
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in parameters:
            close = ", ".join(sorted(parameters))
            problems.append(f"{group}.{key}: unknown key for {node['_target_']}; known keys: {close}")
        elif value is None and f"{group}.{key}" in RULES:
            continue  # a missing value: its rule says what to set, better than "expected str"
        elif not _fits(value, hints.get(key, parameters[key].annotation)):
            problems.append(f"{group}.{key}={value!r}: {_expected(hints.get(key))}")
    problems += [f"{group}.{name}: missing; {node['_target_']} needs it (set {group}.{name}=...)"
                 for name, p in parameters.items()
                 if p.default is p.empty and name not in node and not node.get("_partial_")]  # fmt: skip
    return problems


def has_default(container: dict, key: str) -> bool:
    """Whether ``group.name...``'s group target gives ``name`` a default (a key it lacks is then no mistake)."""
    group, _, rest = key.partition(".")
    node = container.get(group)
    if not rest or not isinstance(node, dict) or "_target_" not in node:
        return False
    parameter = inspect.signature(get_object(node["_target_"])).parameters.get(rest.split(".")[0])
    return parameter is not None and parameter.default is not parameter.empty


def model_max_positions(name_or_path: str) -> int | None:
    """``max_position_embeddings`` from config.json only, if it can be had without a download."""
    try:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(name_or_path, local_files_only=True).max_position_embeddings)
    except Exception:  # not local and not cached: the model loader will say what is wrong
        return None


def task_problems(container: dict) -> list[str]:
    """What the task's labels rule out: the binary-only metrics and threshold on more labels, columns that are
    not named, dropped labels that are also classes, extra dev sets without a file."""
    data, trainer = container.get("data") or {}, container.get("trainer") or {}
    labels = [str(x) for x in data.get("labels") or []] if isinstance(data.get("labels"), list) else []
    problems = []
    if len(labels) > 2:
        for key, value in (("data.metric", data.get("metric")), ("trainer.metric", trainer.get("metric"))):
            if value in BINARY_ONLY:
                problems.append(f"{key}={value}: needs two labels, and the task has {len(labels)} "
                                f"({', '.join(labels)}); use accuracy or macro_f1")  # fmt: skip
        if trainer.get("threshold", 0.5) != 0.5:
            problems.append(f"trainer.threshold={trainer.get('threshold')}: a threshold applies to two labels only; "
                            f"this task has {len(labels)} and predicts the most probable one")  # fmt: skip
    fields = data.get("fields") if isinstance(data.get("fields"), dict) else {}  # none: an older config's default
    problems += [f"data.fields.{role}: must name the column of the {what} sentence"
                 for role, what in (("text_a", "first"), ("text_b", "second"))
                 if "fields" in data and fields.get(role) in (None, "")]  # fmt: skip
    problems += [f"data.drop_labels: {label!r} is also one of data.labels; a label is kept or dropped"
                 for label in map(str, data.get("drop_labels") or []) if label in labels]  # fmt: skip
    for name, entry in (data.get("extra_dev") or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) or not isinstance(entry, dict) or not entry.get("file"):
            problems.append(f"data.extra_dev.{name}: must be {{file: ..., format?: ..., fields?: {{...}}}} under a "
                            "name of letters, digits, _ or -")  # fmt: skip
    return problems


VALID: set[str] = set()  # the resolved configs found valid in this process


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg``; return quietly if there is none. A config found
    valid once in this process (the same resolved values) is not checked again: the train command checks the
    command line's config before Hydra runs, then Hydra's composition of the same, and the Hub's answer and the
    store's check are not asked for twice."""
    problems: list[str] = []
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as error:  # an interpolation that cannot be resolved, e.g. an unset ${oc.env:X}
        where = f"{error.full_key}: " if getattr(error, "full_key", None) else ""
        raise ConfigError(f"invalid config: {where}{str(error).splitlines()[0]}") from None
    seen = json.dumps({k: v for k, v in container.items() if k != "hydra"}, sort_keys=True, default=str)
    if seen in VALID:
        return
    for group in GROUPS:
        node = container.get(group)
        if not isinstance(node, dict) or "_target_" not in node:
            problems.append(f"{group}: no config; pick an option, e.g. {group}=<option> (see conf/{group}/)")
            continue
        problems += check_group(group, node)
    type_errors = {p.split("=")[0].split(":")[0] for p in problems}
    for key, (ok, requirement) in RULES.items():
        value, present = container, True
        for part in key.split("."):
            present = present and isinstance(value, dict) and part in value
            value = value.get(part) if isinstance(value, dict) else None
        if key in type_errors or (not present and has_default(container, key)):  # a config saved before the key
            continue  # existed: the target's default applies
        try:
            good = ok(value)
        except TypeError:  # e.g. None compared with a number
            good = False
        if not good:
            problems.append(f"{key}={value!r}: {requirement}")
    problems += model_problems(str(OmegaConf.select(cfg, "model.name_or_path", default="") or ""))
    if OmegaConf.select(cfg, "tracking.enabled", default=False):
        problems += store_problems(str(OmegaConf.select(cfg, "tracking.uri", default="")))
    problems += task_problems(container)
    folds, fold = OmegaConf.select(cfg, "data.folds", default=None), OmegaConf.select(cfg, "data.fold", default=0)
    if folds and not 0 <= fold < folds:
        problems.append(f"data.fold={fold}: must be in 0..{folds - 1} (data.folds={folds})")
    if not problems:
        limit = model_max_positions(str(OmegaConf.select(cfg, "model.name_or_path", default="")))
        max_length = OmegaConf.select(cfg, "data.max_length", default=None)
        if limit and max_length and max_length > limit:
            problems.append(
                f"data.max_length={max_length}: the model takes at most {limit} positions; set data.max_length<={limit}"
            )
    if problems:
        raise ConfigError("invalid config: " + (problems[0] if len(problems) == 1 else "\n  " + "\n  ".join(problems)))
    VALID.add(seen)


NOT_OURS = re.compile(r"Could not override '([^']+)'")
NO_OPTION = re.compile(r"Could not find '([^'/]+)/([^']+)'")


def check_command_line(argv: Sequence[str], conf_dir: Path, config_name: str = "train") -> None:
    """Exit with one line per problem (status 1), or return and let Hydra run the command."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.experimental_rerun:
        return  # Hydra's own business
    overrides = _first_of_each_sweep(args.overrides)
    if overrides is None:
        return
    cfg, unknown = _compose(conf_dir, config_name, overrides)
    if isinstance(cfg, str):  # an option that does not exist
        raise SystemExit(f"error: {cfg}")
    if cfg is None:
        return
    if unknown:
        raise SystemExit("error: " + "\n       ".join(describe_unknown(unknown, cfg)))
    if cfg.get("resume") or cfg.get("rerun"):
        return
    from omegaconf import OmegaConf

    try:
        validate(cfg)
    except ConfigError as err:
        masker = Masker.from_config(OmegaConf.to_container(cfg, resolve=False))  # the environment's secrets too
        raise SystemExit(f"error: {masker(str(err))}") from None


def _first_of_each_sweep(overrides: list[str]) -> list[str] | None:
    """The overrides with each sweep (``a=1,2``, ``range(...)``) replaced by its first value; None when one
    cannot be read here (Hydra will say why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        single = []
        for override in parsed:
            key = override.get_key_element()
            if override.is_sweep_override():
                single.append(f"{key}={next(iter(override.sweep_string_iterator()))}")
            else:
                single.append(override.input_line)
        return single
    except Exception:  # (glob sweeps, syntax errors...: Hydra's to report)
        return None


def _compose(conf_dir: Path, config_name: str, overrides: list[str]):
    """The composed config and one message per key no config has; a message instead of the config for an option
    no group has; (None, []) when composing fails otherwise."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    unknown = []
    for _ in range(len(overrides) + 1):
        try:
            with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
                return compose(config_name, overrides=overrides), unknown
        except MissingConfigException as error:
            match = NO_OPTION.search(str(error))
            return (missing_option(conf_dir, *match.groups()) if match else None), []
        except ConfigCompositionException as error:
            match = NOT_OURS.search(str(error))
            if not match:
                return None, []
            key = match.group(1)
            overrides = [o for o in overrides if o.split("=", 1)[0] != key]
            unknown.append(key)
        except Exception:  # (a bad value...: Hydra's message is good)
            return None, []
    return None, []


def missing_option(conf_dir: Path, group: str, option: str) -> str:
    """``model=robreta: no such option (did you mean model=roberta?); the options of model: bert, ...``."""
    import difflib

    options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
    match = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    guess = f" (did you mean {group}={match[0]}?)" if match else ""
    return f"{group}={option}: no such option{guess}; the options of {group}: {', '.join(options)}"


def describe_unknown(unknown: list[str], cfg) -> list[str]:
    """``optim.lrr: no such key (did you mean optim.lr?)`` for each unknown key."""
    from omegaconf import OmegaConf

    from ..tracking.run_tracking import flatten

    known = list(flatten(OmegaConf.to_container(cfg, resolve=False)))
    return [f"{key}: no such key{closest(key, known)}" for key in unknown]
