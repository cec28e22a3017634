"""``python faulty_train.py FAULT N [train.py overrides...]``: train.py with a fault injected at a known point
rather than by timing luck:

* ``mid-write``: killed (SIGKILL) inside the Nth write of the last checkpoint: the background writer thread
  has begun the staging folder (a partial weights file);
* ``between-renames``: killed inside the Nth write, the swap falling back to two renames (as where the
  one-call exchange is missing), between them;
* ``kill-at-step``: killed (SIGKILL) right after optimizer step N, before what follows it (logging, a
  checkpoint);
* ``kill-group``: at optimizer step N, SIGKILL the process group ``$AFQMC_TEST_PGID`` (a tracking server)
  and go on training;
* ``gate``: at optimizer step N, wait until the file ``$AFQMC_TEST_GATE`` exists (``$AFQMC_TEST_GATE.waiting``
  says it is waiting, and holds its pid), so a test can act while this run holds its folder;
* ``disk-full``: the Nth write of the best weights finds the disk full (ENOSPC) halfway through;
* ``unrecorded``: killed once result.json is written and N more tracking records are journaled (its MLflow
  run never closed).
"""

import errno
import os
import runpy
import signal
import sys
import time
from pathlib import Path

from afqmc_exp import files
from afqmc_exp.run_folder import RunFolder
from afqmc_exp.tracking import mlflow_run
from afqmc_exp.training import best_weights, checkpoint, trainer

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
        with files.atomic_dir(self.folder) as staging:
            (staging / checkpoint.WEIGHTS).write_bytes(b"\0" * 4096)
            die()
    real_write(self, snapshot)


def between_renames(target: Path) -> None:
    if target.name == RunFolder(".").last_checkpoint.name and writes == AT:
        die()


real_after_step = trainer.Trainer._after_step


def after_step(self):
    if self.state.step == AT and FAULT == "kill-at-step":
        die()
    if self.state.step == AT and FAULT == "kill-group":
        os.killpg(int(os.environ["AFQMC_TEST_PGID"]), signal.SIGKILL)
    if self.state.step == AT and FAULT == "gate":
        gate = Path(os.environ["AFQMC_TEST_GATE"])
        Path(f"{gate}.waiting").write_text(str(os.getpid()))  # which process waits
        while not gate.exists():
            time.sleep(0.1)
    return real_after_step(self)


real_save_best, best_writes = best_weights.save, 0


def save_best(pretrained, folder, meta, accelerator):
    global best_writes
    best_writes += 1
    if FAULT == "disk-full" and best_writes == AT:
        with files.atomic_dir(folder) as staging:
            (staging / checkpoint.WEIGHTS).write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
    real_save_best(pretrained, folder, meta, accelerator)


real_put = mlflow_run.Run._put
journaled_after_result = 0


def put(self, record):
    global journaled_after_result
    if FAULT == "unrecorded" and self.folder is not None and (Path(self.folder) / "result.json").exists():
        if journaled_after_result == AT:
            self.outbox.close()
            die()
        journaled_after_result += 1
    real_put(self, record)


checkpoint.CheckpointWriter._write = write
mlflow_run.Run._put = put
best_weights.save = save_best
trainer.Trainer._after_step = after_step
if FAULT == "between-renames":
    files._exchange = lambda a, b: False
    files._between_renames = between_renames
runpy.run_path(str(Path(__file__).resolve().parents[2] / "train.py"), run_name="__main__")
