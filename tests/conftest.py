"""pytest set-up: temporary files on a RAM disk where there is one, offline, no inherited tracking store, a cache
of the session's own, the --slow switch, shared fixtures.
Helpers the tests import live in ``tests/helpers``.

Why a RAM disk: the tests' runs write SQLite stores, checkpoints, best weights and journals, and each of those
writes is flushed to the disk (``fsync``), as it must be for a user. A virtual disk is slow at times: in one such
hour a new MLflow store took 6.9 s on this machine's disk against 2.2 s on ``/dev/shm``, and a 16-step training
with four checkpoints 30 s against 23 s (docs/testing.md). The code run is the same; only the medium differs.
So, unless ``TMPDIR`` is set, the session's temporary folder is on ``/dev/shm`` when that is a RAM disk with room,
and the folders of tests that passed are removed as they end (``tmp_path_retention_policy`` in pyproject.toml), so
RAM holds little more than what runs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

RAM_DISK, RAM_NEEDED = Path("/dev/shm"), 4 * 2**30  # the slow suite holds 1 to 2 GB there at a time


def is_ram_disk(path: Path, mounts: Path = Path("/proc/mounts")) -> bool:
    """Whether ``path`` is where a ``tmpfs`` is mounted (Linux) that may hold programs (not ``noexec``: compiled
    kernels and a test's venv run from there)."""
    try:
        table = [line.split() for line in mounts.read_text().splitlines()]
    except OSError:
        return False
    return any(m[1:3] == [str(path), "tmpfs"] and "noexec" not in m[3].split(",") for m in table if len(m) > 3)


def ours(folder: Path) -> bool:
    """A folder (not a link) of this user's: a name in a shared place that another user made is not used."""
    found = folder.lstat()
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid()


def on_ram_disk_if_there_is_room() -> None:
    """``TMPDIR`` (this process's and its children's) set to a folder on the RAM disk, unless it is set already."""
    if "TMPDIR" in os.environ or not is_ram_disk(RAM_DISK) or shutil.disk_usage(RAM_DISK).free < RAM_NEEDED:
        return
    folder = RAM_DISK / f"afqmc-exp-tests-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    if not ours(folder):
        return
    folder.chmod(0o711)  # others may pass through to what a test shares with another user, not list it
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # read TMPDIR again


LEFT_BY = "afqmc-exp-tests-pid"  # afqmc-exp-tests-pid<N>-...: the session's cache, the prewarmed servers' folders


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: on Linux a zombie has ended; without ``/proc``, whether the process exists."""
    try:
        with open(f"/proc/{pid}/stat") as process:
            return process.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def session_cache() -> None:
    """The token cache, downloads and compiled kernels of the tests' runs, out of the user's ~/.cache/afqmc_exp:
    a folder of the session's own, removed when the process that made it exits (the workers share it); what a
    killed session left is removed first."""
    if "AFQMC_EXP_CACHE" not in os.environ:
        for left in Path(tempfile.gettempdir()).glob(f"{LEFT_BY}*"):  # a killed session's: its atexit never ran
            pid = left.name[len(LEFT_BY) :].split("-")[0]
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(left, ignore_errors=True)
        folder = tempfile.mkdtemp(prefix=f"{LEFT_BY}{os.getpid()}-cache-")
        os.environ["AFQMC_EXP_CACHE"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


on_ram_disk_if_there_is_room()
session_cache()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # every test names its own store
if os.environ.get("PYTEST_XDIST_WORKER"):  # N workers on N cores: one thread each (and their children), not N each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from helpers import AFQMC, require  # noqa: E402  (after the environment is set)


@pytest.fixture
def afqmc_dir(request):
    """The AFQMC data folder (see ``require``)."""
    require(request, (AFQMC / "train.json").exists(),
            f"AFQMC data not found at {AFQMC}; set AFQMC_DATA to the folder with train/dev/test.json")  # fmt: skip
    return AFQMC


@pytest.fixture(scope="session", autouse=True)
def tiny_minilm(request):
    """Under --slow: the model SHORT_RUN trains (``helpers.TINY_MINILM``), built once for the session."""
    if request.config.getoption("--slow"):
        from helpers import build_tiny_minilm

        build_tiny_minilm()


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory):
    """An MLflow SQLite store with its schema made and nothing in it, made once per session (the schema's
    migrations take a second or two; a copy of the file, milliseconds)."""
    from afqmc_exp.tracking import store

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    store.client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_uri(tmp_path, empty_store_file):
    """A new MLflow store at ``tmp_path/mlflow.db``, as a first run would leave it (see ``empty_store_file``)."""
    import shutil

    shutil.copyfile(empty_store_file, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; a test that changes its precision starts and ends afresh."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker per core; with ``--slow`` one more, as its tests spend part of their time waiting on
    the processes and servers they start (measured: 673 s against 725 s with two workers on two cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores + 1 if config.getoption("--slow") else cores


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow end-to-end tests (CI does)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:  # tests sharing a module's fixture (a trained run, a served UI) run on one worker: built once
        shared = sorted(name for name, defs in item._fixtureinfo.name2fixturedefs.items() if defs[-1].scope == "module")
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{'+'.join(shared)}"))
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
