"""Where afqmc-exp keeps what it fetches or builds once and reuses from run to run: ``$AFQMC_EXP_CACHE``,
else ``~/.cache/afqmc_exp``. It holds the tasks' official archives (``data.download``), the files already
checked and their tokens (``data.token_cache``, under ``checked/`` and ``tokens/``), weights
fetched from an MLflow store (``tracking.stored_weights``, under ``models/``) and torch.compile's kernels
(``model.compile_in_place``, under ``inductor/``). :func:`file_digest` is the one digest of a file's bytes
that their keys use.

A cache that cannot be written (a read-only or another user's folder, a path through a file) is no reason to fail
a run: :func:`cache_root` then says so once and hands out a temporary folder instead, for this process and the
processes it starts (``AFQMC_EXP_CACHE`` is set to it), so the run works as before, only without reuse.

Compiled kernels live here rather than in inductor's default ``/tmp/torchinductor_<user>``: a cluster
job's ``/tmp`` is often the node's own and wiped after the job, and then every job of a sweep compiles from
scratch. In a folder under the home directory the first job compiles and the others read its kernels
(docs/performance.md has the times). A ``TORCHINDUCTOR_CACHE_DIR`` the user sets is kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$AFQMC_EXP_CACHE`` (else ``~/.cache/afqmc_exp``), or a temporary folder when that cannot be written (see
    the module docstring; checked once per process and folder)."""
    root = Path(os.environ.get("AFQMC_EXP_CACHE") or Path.home() / ".cache" / "afqmc_exp")
    if root not in _WRITABLE:
        problem = _cannot_write(root)
        if problem is None:
            _WRITABLE.add(root)
            return root
        fallback = Path(tempfile.mkdtemp(prefix="afqmc_exp-cache-"))
        log.warning("the cache %s cannot be written (%s): caching in %s for this run; set AFQMC_EXP_CACHE to a folder "
                    "you can write to keep what is cached between runs", root, problem, fallback)  # fmt: skip
        os.environ["AFQMC_EXP_CACHE"] = str(fallback)
        _WRITABLE.add(fallback)
        return fallback
    return root


_WRITABLE: set[Path] = set()  # cache folders this process has written to


def _cannot_write(root: Path) -> str | None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MB blocks: what names a cached file (a data file's tokens, an
    archive trusted on first use)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def keep_compiled_kernels() -> None:
    """Point torch.compile's on-disk cache (inductor, and Triton's under it) into :func:`cache_root`, unless
    the user chose a folder; call before anything is compiled."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # an older torch: its default stays
        return
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")
