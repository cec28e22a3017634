"""``key=value`` arguments for the commands that are not Hydra's (evaluate, predict, report), so every command
takes the same override style as training.

Each command's arguments are a dataclass whose fields carry their meaning (``metadata={"help": ...}``):
``--help`` lists every field with its type, default and meaning; a key that does not exist gets the
closest one ("did you mean ...?"); a wrong type or a missing value is one line.
"""

from __future__ import annotations

import difflib
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
    lines = [f"usage: {prog} key=value ...", "", (schema.__doc__ or "").strip(), "", "arguments:"]
    for f in fields(schema):
        required = f.default == REQUIRED or (f.default is MISSING and f.default_factory is MISSING)
        default = "required" if required else f"default {f.default!r}"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {f.name}=<{kind}>  ({default})  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_args(schema: type, argv: Sequence[str], prog: str):
    """``argv`` as ``key=value`` pairs checked against ``schema``; ``-h``/``--help`` prints the usage."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage(schema, prog))
        raise SystemExit(0)
    names = [f.name for f in fields(schema)]
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if not sep:
            raise SystemExit(f"error: {arg!r}: arguments are key=value, e.g. {names[0]}=...; see {prog} --help")
        if key not in names:
            raise SystemExit(f"error: {key}: no such argument{closest(key, names)}; see {prog} --help")
    try:
        args = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(argv)))
        missing = sorted(OmegaConf.missing_keys(args))
        if missing:
            raise ValueError(f"missing {', '.join(m + '=...' for m in missing)}")
        return OmegaConf.to_object(args)
    except (ValueError, OmegaConfBaseException) as err:
        key = getattr(err, "full_key", None)
        where = f"{key}: " if key else ""
        raise SystemExit(f"error: {where}{str(err).splitlines()[0]}; see {prog} --help") from None


def help_of(text: str) -> dict:
    """Field metadata holding an argument's meaning: ``field(default=..., metadata=help_of("..."))``."""
    return {"help": text}
