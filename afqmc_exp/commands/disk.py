"""What runs keep on disk: ``afqmc-disk [outputs=DIR] [uri=STORE]``.

After a few dozen runs ``outputs/`` and the MLflow store's artifacts (``mlruns/``) hold gigabytes, most of it best
weights kept twice: once in the run folder, once uploaded to the run's artifacts (``tracking.log_weights``). This
lists every run folder under ``outputs`` with what it holds, its best weights and the size of their copy in the
store (where the store's artifacts are on this disk), largest first, then the totals and how to free each. It
reads and deletes nothing.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..files import megabytes, size_of
from ..run_folder import BEST_MODEL, RunFolder
from ..tracking.store import first_line
from .arguments import help_of, parse_args


@dataclass
class DiskArgs:
    """List what the run folders under ``outputs`` and their copies in the MLflow store take on disk."""

    outputs: str = field(default="outputs", metadata=help_of("the folder of run folders (Hydra's outputs/)"))
    uri: str | None = field(
        default=None, metadata=help_of("the tracking store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``afqmc-disk`` / ``python -m afqmc_exp disk``. Returns None (see ``commands.report.main``)."""
    print(listing(parse_args(DiskArgs, sys.argv[1:] if argv is None else argv, "afqmc-disk")))


class StoreNotAsked(RuntimeError):
    """The store could not be asked about a run (a server down, a database gone): no other run is asked either."""


def stored_copy(client, run_id: str | None) -> int:
    """Bytes of the best weights uploaded to the run's artifacts, where those are on this disk (else 0);
    :class:`StoreNotAsked` when the store does not answer (each question would wait through MLflow's retries)."""
    from urllib.parse import urlparse

    from mlflow.exceptions import MlflowException

    if client is None or not run_id:
        return 0
    try:
        artifacts = urlparse(client.get_run(run_id).info.artifact_uri)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # a run deleted from the store: nothing of it here
            return 0
        raise StoreNotAsked(first_line(error)) from None
    except Exception as error:  # a connection refused, a timeout: the store is not there to ask
        raise StoreNotAsked(first_line(error)) from None
    return size_of(Path(artifacts.path) / BEST_MODEL) if artifacts.scheme in ("", "file") else 0


def run_folders(outputs: Path) -> list[RunFolder]:
    """Every run folder under ``outputs`` (single runs and sweeps' jobs): a folder with a saved config."""
    folders = (RunFolder(config.parent.parent) for config in outputs.rglob("config.yaml"))
    return sorted((folder for folder in folders if folder.config.is_file()), key=lambda folder: str(folder.root))


def listing(args: DiskArgs) -> str:
    """The table, largest first, and the totals with how to free them."""
    outputs = Path(args.outputs)
    if not outputs.is_dir():
        raise SystemExit(f"error: outputs={outputs}: no such folder (run afqmc-disk where you train, or name it)")
    (client, not_asked), rows = _client(args.uri), []
    for folder in run_folders(outputs):
        try:
            copy = stored_copy(client, folder.run_id())
        except StoreNotAsked as why:
            client, not_asked, copy = None, why, 0
        rows.append((size_of(folder.root), size_of(folder.best_model), copy, folder))
    rows.sort(key=lambda row: -(row[0] + row[2]))
    lines = [f"{'run folder':<60} {'folder':>9} {'weights':>9} {'in MLflow':>9}"]
    for whole, weights, copy, folder in rows:
        lines.append(f"{str(folder.root):<60} {megabytes(whole):>9} {megabytes(weights):>9} {megabytes(copy):>9}")
    whole, weights, copies = (sum(row[k] for row in rows) for k in range(3))
    lines += [
        f"{len(rows)} run folders: {megabytes(whole)} in {outputs} ({megabytes(weights)} of it best weights), "
        f"{megabytes(copies)} of weights copied into the MLflow store's artifacts",
        "to keep one copy of a run's weights: tracking.log_weights=false (runs:/ then has none to fetch); to forget "
        f"a run's files: rm -r <run folder> (its MLflow run stays); to free a run deleted in the UI: mlflow gc "
        f"--backend-store-uri {shlex.quote(_store(args.uri))}",
    ]
    if not_asked is not None:
        lines.append(f"the MLflow store {_store(args.uri)} could not be asked ({not_asked}): its copies count nothing "
                     "above")  # fmt: skip
    return "\n".join(lines)


def _store(uri: str | None) -> str:
    from ..tracking.masking import mask_uri
    from ..tracking.store import default_uri, resolve_uri

    return mask_uri(resolve_uri(uri or default_uri()))


def _client(uri: str | None) -> tuple[object | None, str | None]:
    """The store's client, or None where there is none yet (its copies then count 0, rightly) or it cannot be asked
    now (another process holds it past the wait, a server that is down: its copies count 0, and why is said)."""
    from ..tracking import store

    try:
        return store.client(uri, create=False), None
    except store.StoreMissing:
        return None, None
    except (store.StoreBusy, store.StoreUnreachable) as not_now:
        return None, first_line(not_now)


if __name__ == "__main__":
    main()
