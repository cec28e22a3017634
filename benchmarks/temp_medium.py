"""What a RAM disk saves the tests' runs: a flush to the disk (``fsync``) and a new MLflow store, on a disk folder
against a ``tmpfs`` folder, alternating arms in one run.

    python benchmarks/temp_medium.py [--disk /tmp] [--ram /dev/shm] [--rounds 4]

Why it is measured: a run flushes every write that must survive a crash (SQLite's transactions, checkpoints, best
weights, the outbox's journal), and a virtual disk's flush can take milliseconds at one hour and microseconds at
another. ``tests/conftest.py`` puts the tests' temporary files on ``/dev/shm`` for that reason
(docs/testing.md). Each round measures the median of 50 flushes of 4 kB in each folder, and a new MLflow SQLite
store (its schema's migrations) made by a fresh process in each. Printed: a line per arm and round, then one
line of JSON with each arm's medians and the disk/RAM ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAKE_STORE = """
import sys, time
from mlflow import MlflowClient
started = time.perf_counter()
MlflowClient(tracking_uri=f"sqlite:///{sys.argv[1]}/mlflow.db").search_experiments()
print(time.perf_counter() - started)
"""


def flush_ms(folder: Path, times: int = 50) -> float:
    """The median time of one ``fsync`` of a 4 kB write in ``folder``, in milliseconds."""
    taken = []
    with tempfile.NamedTemporaryFile(dir=folder) as file:
        for _ in range(times):
            file.write(b"x" * 4096)
            file.flush()
            started = time.perf_counter()
            os.fsync(file.fileno())
            taken.append((time.perf_counter() - started) * 1000)
    return statistics.median(taken)


def store_seconds(folder: Path) -> float:
    """How long a fresh process takes to make a new MLflow store in ``folder`` (its imports not counted)."""
    with tempfile.TemporaryDirectory(dir=folder) as place:
        made = subprocess.run([sys.executable, "-c", MAKE_STORE, place], capture_output=True, text=True, check=True)
    return float(made.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk", type=Path, default=Path(tempfile.gettempdir()), help="a folder on the disk")
    parser.add_argument("--ram", type=Path, default=Path("/dev/shm"), help="a folder on a RAM disk (tmpfs)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    arms = {"disk": args.disk, "ram": args.ram}
    seen = {arm: {"fsync_ms": [], "new_store_s": []} for arm in arms}
    for round_ in range(args.rounds):
        for arm, folder in arms.items():  # alternating: a change in the machine's speed reaches both arms
            flush, store = flush_ms(folder), store_seconds(folder)
            seen[arm]["fsync_ms"].append(flush)
            seen[arm]["new_store_s"].append(store)
            print(f"round {round_ + 1} {arm} ({folder}): fsync {flush:.3f} ms, new store {store:.2f} s", flush=True)
    report = {arm: {k: statistics.median(v) for k, v in values.items()} for arm, values in seen.items()}
    report["disk_over_ram"] = {k: report["disk"][k] / max(report["ram"][k], 1e-9) for k in seen["disk"]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
