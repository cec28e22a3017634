"""Secrets stay out of everything a run writes for others to see: MLflow params, tags and artifacts, the log
file and the console.

A secret is the value of a config key that looks like one (``api_token``, ``password``, ``secret``...), a
password inside a URI (``http://alice:PASSWORD@host``, ``postgresql://user:PASSWORD@db``), in the config or
in ``MLFLOW_TRACKING_URI``, or the value of an environment variable named like one (``MLFLOW_TRACKING_PASSWORD``,
``HF_TOKEN``). Secrets are masked by value, wherever they appear: a key that copies one by interpolation
(``copy=${db_password}``, ``x=${oc.env:MLFLOW_TRACKING_PASSWORD}``) shows ``***`` too. :class:`Masker` knows the
run's secrets and replaces them with ``***`` in any text; ``install_log_filter`` applies it to every log record
before any handler writes it. The run folder's own ``.hydra/*.yaml`` keep the real values (``resume`` needs
them), readable by their owner only (``hide_run_config``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..run_folder import RunFolder
from ..sweep_folder import SweepFolder

SECRET_KEY = re.compile(
    r"(token(?!i[sz])|password|passwd|secret|api[_-]?key|credential)", re.IGNORECASE
)  # no tokenizer
SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|_TOKEN$|^TOKEN$|API_?KEY|CREDENTIAL)")  # not TOKENIZERS_...
URI_PASSWORD = re.compile(r"(://[^/:@\s]+:)([^@\s]+)@")  # as SQLAlchemy reads a URL: the password runs to the @
ASSIGNMENT = re.compile(r"(?<![^\s'\"(\[,])([+~]{0,2}[\w.-]+=)([^\s'\"\])]+)")  # key=value in an override or a line
SWEEP_SYNTAX = re.compile(r"[,()\[\]'\"\s]+|\b(?:choice|range|interval|glob|tag|sort|shuffle)\b")
MASK = "***"
SHORTEST = 4  # shorter values are not searched for in free text (they would mask ordinary words)


def mask_uri(text: str) -> str:
    """``scheme://user:PASSWORD@host`` -> ``scheme://user:***@host``."""
    return URI_PASSWORD.sub(rf"\g<1>{MASK}@", text)


class Masker:
    """Replaces the run's secret values (and any password inside a URI) with ``***`` in text."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if len(s) >= SHORTEST}, key=len, reverse=True)

    @classmethod
    def from_config(cls, tree: Mapping[str, Any], environ: Mapping[str, str] = os.environ,
                    overrides: Iterable[str] = ()) -> Masker:  # fmt: skip
        """The secrets of a config, of the environment, and of command-line ``overrides`` (a sweep's values of a
        secret key, ``+db_password=a,b``, which no single config holds)."""
        found: list[str] = []
        _collect(tree, found)
        found += [m.group(2) for m in URI_PASSWORD.finditer(environ.get("MLFLOW_TRACKING_URI", ""))]
        found += [value for name, value in environ.items() if SECRET_ENV.search(name.upper()) and value]
        for override in overrides:
            key, _, value = override.partition("=")
            if _secret_key(key):
                found += [v for v in SWEEP_SYNTAX.split(value) if v and v != "null"]
        return cls(found)

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def values(self, mapping: Mapping[str, str]) -> dict[str, str]:
        """``mapping`` with every value masked (params: a key may hold a secret it copied by interpolation)."""
        return {key: self(value) for key, value in mapping.items()}

    def __call__(self, text: str) -> str:
        """``text`` with passwords in URIs, the values of secret keys (``+db_password=x``, however short) and every
        known secret masked."""
        text = ASSIGNMENT.sub(_masked_assignment, mask_uri(text))
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def override(self, override: str) -> str:
        """A command-line override ``key=value`` with the value masked when the key looks secret."""
        return self(override)


def _secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key.split(".")[-1]))


def _masked_assignment(match: re.Match) -> str:
    key, value = match.group(1), match.group(2)
    return f"{key}{MASK}" if _secret_key(key[:-1]) and value not in ("", "null") else match.group(0)


def _collect(value: Any, found: list[str], key: str = "") -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, found, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, found, key)
    elif isinstance(value, str):
        if SECRET_KEY.search(key) and value:
            found.append(value)
        found += [m.group(2) for m in URI_PASSWORD.finditer(value)]


class _MaskingFilter(logging.Filter):
    def __init__(self, masker: Masker):
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self.masker(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def hide_run_config(folder: Path, masker: Masker) -> None:
    """A run folder's config files (``.hydra/*.yaml``, a sweep's ``multirun.yaml``), which keep the real values of
    its secrets, made readable by their owner only."""
    if masker:
        sweep_config = SweepFolder(folder).saved_config
        for path in [*RunFolder(folder).hydra.glob("*.yaml"), *([sweep_config] if sweep_config.exists() else [])]:
            path.chmod(0o600)


def install_log_filter(masker: Masker) -> None:
    """Mask every record reaching the root logger's handlers as they are now (console, Hydra's train.log); a
    handler added to the root later is not masked until this is called again (each run calls it as it starts)."""
    for handler in logging.getLogger().handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, _MaskingFilter)]
        handler.addFilter(_MaskingFilter(masker))
