"""Weights logged to MLflow, as a local folder: ``runs:/<run id>/best_model`` and ``models:/NAME/VERSION``
(or ``models:/NAME@alias``, ``models:/NAME/latest``) for ``evaluate`` and ``predict``.

Downloads are cached by what they name for good, a run id or a model version number (an alias or
``latest`` is first turned into its version, since those move), under ``$AFQMC_EXP_CACHE/models``
(default ``~/.cache/afqmc_exp``): the second ``predict`` on the same weights starts in seconds. A file
store's artifacts are on this disk already and are read where they are. ``runs:/<sweep parent>/best_model``
means the sweep's best job's weights. A URI that names nothing is one line.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..cache import cache_root
from . import store

log = logging.getLogger(__name__)


class FetchError(ValueError):
    """A ``runs:/`` or ``models:/`` URI that cannot be turned into weights; the message is one line."""


def local_weights(ckpt: str, tracking_uri: str | None = None) -> Path:
    """A folder holding the weights ``ckpt`` names (a folder is returned as it is); ``tracking_uri``: the store
    (none: the default one)."""
    if not ckpt.startswith(("runs:/", "models:/")):
        return Path(ckpt)
    from mlflow.exceptions import MlflowException

    try:
        client = store.client(tracking_uri)
    except store.StoreUnreachable as down:
        raise FetchError(f"ckpt={ckpt}: {down}") from None
    tracking_uri = client.tracking_uri
    try:
        uri, key = _pinned(client, ckpt)
        return _on_this_disk(client, uri) or _cached(uri, key, tracking_uri)
    except MlflowException as error:
        raise FetchError(f"ckpt={ckpt}: {store.first_line(error)} (store: {tracking_uri})") from None


def _pinned(client, ckpt: str) -> tuple[str, str]:
    """The URI with a fixed run id or version number, and its cache key. A path that climbs out of the run's
    artifacts (``..``) or names an absolute one is refused: it would be read, or cached, outside them."""
    parts = ckpt.split(":/", 1)[1].split("/")
    if ".." in parts or ckpt.split(":/", 1)[1].startswith("/") or "" in parts[1:-1]:
        raise FetchError(f"ckpt={ckpt}: a path inside the run or model may not hold '..' or start at '/'")
    if ckpt.startswith("runs:/"):
        run_id, _, path = ckpt[len("runs:/") :].partition("/")
        tags = client.get_run(run_id).data.tags
        best = tags.get("sweep.best_run_id")  # a sweep's parent: its best job
        if best:
            log.info(
                "run %s is a sweep's parent: scoring its best job, %s (run %s)",
                run_id,
                tags.get("sweep.best_run_name", "?"),
                best,
            )
        run_id = best or run_id
        return f"runs:/{run_id}/{path}", f"runs/{run_id}/{path or 'root'}"
    name, version = _model_version(client, ckpt[len("models:/") :])
    return f"models:/{name}/{version}", f"models/{name}/{version}"


def _model_version(client, spec: str) -> tuple[str, str]:
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return name, client.get_model_version_by_alias(name, alias).version
    name, _, version = spec.partition("/")
    if version in ("", "latest"):
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise FetchError(f"ckpt=models:/{spec}: no registered model named {name!r}")
        version = str(max(int(v.version) for v in versions))
    client.get_model_version(name, version)  # raises, in one line, when it does not exist
    return name, version


def _on_this_disk(client, uri: str) -> Path | None:
    """The run's artifact folder itself, when the artifact store is a local folder holding plain weights."""
    if not uri.startswith("runs:/"):
        return None
    run_id, _, path = uri[len("runs:/") :].partition("/")
    root = client.get_run(run_id).info.artifact_uri
    if "://" in root and not root.startswith("file://"):
        return None
    folder = Path(root.removeprefix("file://")) / path
    return folder if (folder / "config.json").exists() else None


def _cached(uri: str, key: str, tracking_uri: str) -> Path:
    import mlflow

    target = cache_root() / "models" / key
    if (target / "config.json").exists():
        log.info("%s: cached in %s", uri, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:  # the store is named on the call: the process's global MLflow URIs are left alone
        downloaded = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(staging), tracking_uri=tracking_uri, registry_uri=tracking_uri))  # fmt: skip
        _publish(_flatten_flavour(downloaded), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _publish(folder: Path, target: Path) -> None:
    """``folder`` becomes the cache entry ``target`` in one rename: complete or absent, a cut download is never taken
    for a cached one. Weights another process placed there meanwhile (the same fetch at the same time) are kept; an
    entry without weights (an earlier fetch of a folder that held none) is replaced."""
    if target.exists() and not (target / "config.json").exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(folder, target)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (target / "config.json").exists():
            raise


def _flatten_flavour(folder: Path) -> Path:
    """A logged model's weights folder: the served model keeps them as its artifact (``artifacts/<folder>``, see
    ``served_model``); a model logged as ``mlflow.transformers`` by earlier versions keeps them in model/ and its
    tokenizer apart: they are put together."""
    served = sorted(p.parent for p in folder.glob("artifacts/*/config.json"))
    if served:
        return served[0]
    if (folder / "MLmodel").exists():
        for part in ("model", "components/tokenizer"):
            for item in (folder / part).iterdir():
                os.replace(item, folder / item.name)
    return folder
