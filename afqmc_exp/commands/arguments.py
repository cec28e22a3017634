"""``key=value`` arguments for the commands that are not Hydra's (evaluate, predict, report), so every command
takes the same override style as training.

Each command's arguments are a dataclass whose fields carry their meaning (``metadata={"help": ...}``):
``--help`` lists every field with its type, default and meaning; a key that does not exist gets the
closest one ("did you mean ...?"); a wrong type or a missing value is one line.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, fields

from omegaconf import MISSING as REQUIRED
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def closest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the known key closest to ``key``, or nothing when none is close."""
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def usage(schema: type, prog: str) -> str:
    lines = [f"usage: {prog} key=value ...", "", " ".join((schema.__doc__ or "").split()), "", "arguments:"]
    for f in fields(schema):
        required = f.default == REQUIRED or (f.default is MISSING and f.default_factory is MISSING)
        default = "required" if required else f"default {f.default!r}"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {f.name}=<{kind}>  ({default})  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def takes_text(annotation) -> bool:
    """Whether an argument's annotation admits a string: its value is then taken verbatim."""
    if annotation is str:
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and str in typing.get_args(annotation)


def parse_args(schema: type, argv: Sequence[str], prog: str):
    """``argv`` as ``key=value`` pairs checked against ``schema``; ``-h``/``--help`` prints the usage.

    A string argument (a path, a sentence) is taken exactly as given: YAML would cut it at `` #`` and read
    ``a: b`` as a mapping. Other values (numbers, booleans) are read as YAML, as Hydra reads training's."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage(schema, prog))
        raise SystemExit(0)
    hints, given = typing.get_type_hints(schema), {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            example = next(iter(hints))
            raise SystemExit(f"error: {arg!r}: arguments are key=value, e.g. {example}=...; see {prog} --help")
        if key not in hints:
            raise SystemExit(f"error: {key}: no such argument{closest(key, hints)}; see {prog} --help")
        given[key] = value
    text = {key: value for key, value in given.items() if takes_text(hints[key])}
    try:
        typed = OmegaConf.from_dotlist([f"{k}={v}" for k, v in given.items() if k not in text])
        args = OmegaConf.merge(OmegaConf.structured(schema), typed)
        missing = sorted(set(OmegaConf.missing_keys(args)) - set(text))
        if missing:
            raise ValueError(f"missing {', '.join(m + '=...' for m in missing)}")
        for key in text:
            args[key] = ""  # set verbatim on the object below (OmegaConf would read ${...} in it)
        parsed = OmegaConf.to_object(args)
    except (ValueError, OmegaConfBaseException) as err:
        key = getattr(err, "full_key", None)
        where = f"{key}: " if key else ""
        raise SystemExit(f"error: {where}{str(err).splitlines()[0]}; see {prog} --help") from None
    for key, value in text.items():
        setattr(parsed, key, value)
    return parsed


def help_of(text: str) -> dict:
    """Field metadata holding an argument's meaning: ``field(default=..., metadata=help_of("..."))``."""
    return {"help": text}
