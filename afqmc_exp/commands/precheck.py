"""The training command line, checked before Hydra runs it: nothing is created when it cannot run.

Hydra answers a misspelt key (``optim.lrr=1``) with "To append to your config use +optim.lrr=1", which
sends users the wrong way, and it creates the run's output folder before any check of ours. So the
command's config is composed once here, with Hydra's own compose API (a sweep's first values stand for
it): an unknown key is one line with the closest known one, and the whole config is validated
(``schema.validate``) before Hydra makes a folder. ``resume``/``rerun`` configs come from elsewhere and
are checked when loaded; anything this check does not understand is left to Hydra.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..tracking.masking import Masker
from .arguments import closest
from .schema import ConfigError, validate

PREFIX = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~", "CHANGE": ""}
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
    except Exception:  # noqa: BLE001  (glob sweeps, syntax errors...: Hydra's to report)
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
        except Exception:  # noqa: BLE001  (a bad value...: Hydra's message is good)
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

    from ..tracking.config import flatten

    known = list(flatten(OmegaConf.to_container(cfg, resolve=False)))
    return [f"{key}: no such key{closest(key, known)}" for key in unknown]
