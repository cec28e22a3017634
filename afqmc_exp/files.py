"""Writing files so that a kill leaves the old version or the new one, never half of one, and with the permissions
the user's umask gives, as every other file of a run folder has.

* :func:`replaced_file`: a new version of a file is written into a staging file beside it and replaces it only once
  complete; any failure (a bad line, a full disk, Ctrl-C) removes the staging file and leaves the old version. The
  staging file is created new (``mkstemp``: a name no file has yet), so it can never be someone's input that
  happens to be called ``<name>.part``.
* :func:`umask_mode` and :func:`follow_umask`: ``mkstemp`` creates files readable by their owner only, and so does
  safetensors 0.8 for the weights it writes; a teammate reading a run on a shared store then cannot. Files this
  package writes get what the umask gives (0644 under the usual 022); only a run's own config, which keeps its
  secrets, is made private, on purpose (``tracking.masking.hide_run_config``).
* :func:`size_of` and :func:`megabytes`: what files take on disk, as the run's summary and ``afqmc-disk`` say it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def umask_mode(folder: bool = False) -> int:
    """The mode a new file (or folder) gets under this process's umask: 0o644 (0o755) under the usual 022."""
    return (0o777 if folder else 0o666) & ~_umask()


def _umask() -> int:
    try:  # read, not set: setting it to read it would change it for every thread for a moment
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def follow_umask(folder: Path) -> None:
    """Every file and folder under ``folder`` (and it) given the umask's mode, whatever wrote them."""
    folder = Path(folder)
    folder.chmod(umask_mode(folder=True))
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(umask_mode(folder=path.is_dir()))


@contextlib.contextmanager
def replaced_file(path: Path, binary: bool = False):
    """Yield a file open for writing that replaces ``path`` when the block ends without an error (see above)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(handle, umask_mode())
        with os.fdopen(handle, "wb" if binary else "w", encoding=None if binary else "utf-8") as file:
            yield file
        os.replace(staged, path)
    except BaseException:  # (a Ctrl-C too: the staged file goes, and it is raised again)
        Path(staged).unlink(missing_ok=True)
        raise


def size_of(path: Path) -> int:
    """Bytes of the files under ``path`` (a file's own size; 0 for nothing there), links not followed."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def megabytes(size: int) -> str:
    """``87 MB``: what a user reads of a disk's cost."""
    return f"{size / 1e6:,.0f} MB"
