"""``python faulty_train.py FAULT N [train.py overrides...]``: train.py, killed with SIGKILL inside the Nth write of
the last checkpoint, at a known point rather than by timing luck:

* ``mid-write``: the background writer thread has begun the staging folder (a partial weights file) when the
  process dies;
* ``between-renames``: the swap falls back to two renames (as where the one-call exchange is missing) and the
  process dies between them.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from afqmc_exp import checkpoint

FAULT, AT = sys.argv[1], int(sys.argv[2])
sys.argv = [sys.argv[0], *sys.argv[3:]]
writes = 0


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


real_write = checkpoint.CheckpointWriter._write


def write(self, snapshot):
    global writes
    writes += 1
    if writes == AT and FAULT == "mid-write":
        with checkpoint.atomic_dir(self.folder) as staging:
            (staging / checkpoint.WEIGHTS).write_bytes(b"\0" * 4096)
            die()
    real_write(self, snapshot)


def between_renames(target: Path) -> None:
    if target.name == checkpoint.LAST_CHECKPOINT and writes == AT:
        die()


checkpoint.CheckpointWriter._write = write
if FAULT == "between-renames":
    checkpoint._exchange = lambda a, b: False
    checkpoint._between_renames = between_renames
runpy.run_path(str(Path(__file__).resolve().parents[2] / "train.py"), run_name="__main__")
