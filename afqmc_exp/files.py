"""Writing files so that a kill leaves the old version or the new one, never half of one, and with the permissions
the user's umask gives, as every other file of a run folder has.

* :func:`replaced_file`: a new version of a file is written into a staging file beside it and replaces it only once
  complete; any failure (a bad line, a full disk, Ctrl-C) removes the staging file and leaves the old version. The
  staging file is created new (``mkstemp``: a name no file has yet), so it can never be someone's input that
  happens to be called ``<name>.part``.
* :func:`umask_mode` and :func:`follow_umask`: ``mkstemp`` creates files readable by their owner only, and so does
  safetensors 0.8 for the weights it writes; a teammate reading a run on a shared store then cannot. Files this
  package writes get what the umask gives (0644 under the usual 022); only a run's own config and a sweep's
  overrides, which keep their secrets, are made private, on purpose (``tracking.masking.hide_run_config``,
  ``replaced_file(private=True)``).
* :func:`atomic_dir`: the same for a folder (the best weights, the last checkpoint), written into a staging folder
  that then takes the old one's place. On Linux the two folders are exchanged by one ``renameat2(RENAME_EXCHANGE)``
  call, so a kill at any moment leaves the old complete folder or the new one. Where that call is missing (other
  systems, some network file systems) the swap is two renames; a kill between them leaves the folder missing with
  both copies beside it, and :func:`recover` puts the newer one back: before every write of such a folder, when a run
  takes its folder (``training.run.taken``), and in readers that do not take it. A write that fails (a full disk)
  removes its staging folder and leaves the old version in place: :class:`NoSpaceLeft` says so in one line. A folder
  that is a symlink (weights kept on another disk) is swapped where it points; the link stays.
* :func:`held`: one process at a time in a folder (the run folder's ``.run.lock``): the operating system's ``flock``,
  so a killed holder lets go; a second process is refused at once (:class:`InUse`), before it writes into the folder.
  A process may take the lock before its block (:func:`take`: the train command's guard, before Hydra writes into
  the folder) and keep it until :func:`let_go`; its own blocks then enter it again, where another process's are
  refused.
* :func:`size_of` and :func:`megabytes`: what files take on disk, as the run's summary and ``afqmc-disk`` say it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


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
def replaced_file(path: Path, binary: bool = False, private: bool = False):
    """Yield a file open for writing that replaces ``path`` when the block ends without an error (see above).
    ``private``: readable by its owner only from its first byte (it keeps secrets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(handle, 0o600 if private else umask_mode())
        with os.fdopen(handle, "wb" if binary else "w", encoding=None if binary else "utf-8") as file:
            yield file
        os.replace(staged, path)
    except BaseException:  # (a Ctrl-C too: the staged file goes, and it is raised again)
        Path(staged).unlink(missing_ok=True)
        raise


def companions(target: Path) -> tuple[Path, Path]:
    """The staging folder a new version is written into, and where the old one waits during a two-rename swap."""
    return target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")


def _renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (AttributeError, OSError):
        return None


_RENAMEAT2 = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if _RENAMEAT2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _between_renames(target: Path) -> None:
    """Called between the two renames of a non-atomic swap; tests replace it to kill the process there."""


def recover(target: Path) -> None:
    """Put ``target`` back after a kill between the two renames of a swap: then it is missing, the old
    version waits in ``.NAME.old`` and the complete new one in ``.NAME.tmp`` (the first rename only happens
    after the new version is written). The newer one is restored. Nothing to do in any other state: a
    missing target without ``.old`` means the first version was never finished."""
    target = Path(target).resolve() if Path(target).is_symlink() else Path(target)
    staging, retired = companions(target)
    if target.exists() or not retired.exists():
        return
    try:
        os.replace(staging if staging.exists() else retired, target)
        log.warning("%s: restored after an interrupted swap", target)
    except OSError as err:  # the writer's second rename, or another reader, put the new version back first
        if err.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
            raise


class NoSpaceLeft(RuntimeError):
    """The disk filled while a checkpoint or the best weights were written; the previous version is intact."""


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a full disk or quota: safetensors and torch.save re-raise the
    OSError as their own error types, with its text."""
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in ("No space left on device", "os error 28", "Disk quota exceeded")):
            return True
        error = error.__cause__ or error.__context__
    return False


class InUse(RuntimeError):
    """Another process holds the lock of a folder this one was to write into; the message says what to do."""


_LOCKS: dict[Path, object] = {}  # this process's lock of each lock file it took, reentered when taken again
os.register_at_fork(after_in_child=_LOCKS.clear)  # a forked child holds none of its parent's: it is another process


def _lock_of(lock: Path):
    from filelock import FileLock

    key = Path(lock).resolve()
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(key, timeout=0, thread_local=False)
    return _LOCKS[key]


def take(lock: Path, in_use: str) -> None:
    """``lock`` held by this process until :func:`let_go` or its end; :class:`InUse` with the message ``in_use`` if
    another process holds it. This process taking it again (``held``) enters it again."""
    from filelock import Timeout

    try:
        _lock_of(lock).acquire()
    except Timeout:
        raise InUse(in_use) from None


def let_go(lock: Path) -> None:
    """``lock`` no longer held by this process, however often it took it (nothing if it did not)."""
    file_lock = _LOCKS.pop(Path(lock).resolve(), None)
    if file_lock is not None:
        file_lock.release(force=True)


@contextlib.contextmanager
def held(lock: Path, in_use: str):
    """``lock`` held for the block (see the module docstring); :class:`InUse` with the message ``in_use`` if another
    process holds it."""
    file_lock = _lock_of(lock)
    take(lock, in_use)
    try:
        yield
    finally:
        file_lock.release()


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a staging folder; on success it replaces ``target`` atomically (see the module docstring)."""
    target = Path(target).resolve() if Path(target).is_symlink() else Path(target)
    recover(target)
    staging, retired = companions(target)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException as error:  # (a kill or Ctrl-C too: no half-written copy is left, and it is raised again)
        shutil.rmtree(staging, ignore_errors=True)  # a partial copy would only fill the disk further
        if disk_full(error):
            kept = f"the previous {target.name} is intact" if target.exists() else f"no earlier {target.name} existed"
            raise NoSpaceLeft(f"no space left on the device of {target} while writing it; {kept}. Free some space, "
                              "then resume the run") from None  # fmt: skip
        raise
    follow_umask(staging)  # safetensors writes its files for their owner only; a run folder's are the umask's
    if not target.exists():
        os.replace(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now the old version
    else:
        os.replace(target, retired)
        _between_renames(target)
        try:
            os.replace(staging, target)
        except FileNotFoundError:  # a reader's recover() (evaluate, predict) moved this new version in first
            if not target.exists():
                raise
        shutil.rmtree(retired, ignore_errors=True)


def size_of(path: Path) -> int:
    """Bytes of the files under ``path`` (a file's own size; 0 for nothing there), links not followed."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def megabytes(size: int) -> str:
    """``87 MB``: what a user reads of a disk's cost."""
    return f"{size / 1e6:,.0f} MB"
