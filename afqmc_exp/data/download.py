"""Official archives: fetched once into the cache, checked, and unpacked into ``data.dir``.

Where a task's origin publishes its files (the CLUE zips for AFQMC, CMNLI, OCNLI and the diagnostics set;
the PAWS-X tarball), a folder that lacks them gets them from there; LCQMC, BQ and CHIP-STS are licensed by
their origins, so the message says where to ask for them instead. No origin publishes a checksum, so an
archive is trusted on first use: its SHA-256 is recorded beside the cached copy when it is downloaded and
checked on every later use, and a corrupted or swapped cache is noticed instead of silently trained on.
Only the members a task names are read out of an archive (matched by the end of their path), so an archive
cannot write anywhere else. Offline (``HF_HUB_OFFLINE`` or ``AFQMC_EXP_OFFLINE``) a missing file fails at once,
naming the archive and where to put its files.

**A user's folder is the user's.** A task fetches only its own archive (the CLUE NLI tasks also the CLUE
diagnostics set), never another task's. An archive is unpacked only into a folder that is empty (hidden files
aside) or holds nothing but files an earlier unpacking put there (listed in ``UNPACKED``): a folder of the
user's own files that lacks one is refused in one line, never filled with an official set the user did not ask
for. :data:`OFFICIAL_FILES` says which files each task's origin names, so a folder of another task's files is
named for what it is (``data=lcqmc``) instead of being taken for the task on the command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from ..cache import cache_root, file_digest
from ..files import replaced_file
from ..hub import TRUE
from ..hub import offline as hub_offline
from .formats import DataError

log = logging.getLogger(__name__)

CLUE = "https://storage.googleapis.com/cluebenchmark/tasks"


@dataclass(frozen=True)
class Archive:
    url: str
    members: dict[str, str]  # file name in data.dir -> the end of its path inside the archive
    tasks: tuple[str, ...]  # the tasks that fetch it

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[1]


def _same(*names: str) -> dict[str, str]:
    return {name: name for name in names}


ARCHIVES = {
    "afqmc": Archive(f"{CLUE}/afqmc_public.zip", _same("train.json", "dev.json", "test.json"), ("afqmc",)),
    "cmnli": Archive(f"{CLUE}/cmnli_public.zip", _same("train.json", "dev.json", "test.json"), ("cmnli",)),
    "ocnli": Archive(f"{CLUE}/ocnli_public.zip", _same("train.50k.json", "dev.json", "test.json"), ("ocnli",)),
    "clue_diagnostics": Archive(f"{CLUE}/clue_diagnostics_public.zip", _same("diagnostics_test.json"),
                                ("cmnli", "ocnli")),  # the CLUE diagnostics of natural language inference
    "pawsx": Archive("https://storage.googleapis.com/paws/pawsx/x-final.tar.gz",
                     {n: f"zh/{n}" for n in ("translated_train.tsv", "dev_2k.tsv", "test_2k.tsv")}, ("pawsx",)),
}  # fmt: skip
ELSEWHERE = {  # tasks whose origin licenses its files: where to ask for them
    "lcqmc": "LCQMC is distributed by its authors at Harbin Institute of Technology (Shenzhen) under a licence: "
    "request it at http://icrc.hitsz.edu.cn/info/1037/1146.htm",
    "bq": "the BQ Corpus is distributed by its authors at Harbin Institute of Technology (Shenzhen) under a "
    "licence: request it at http://icrc.hitsz.edu.cn/info/1037/1162.htm",
    "chip_sts": "CHIP-STS is part of CBLUE, downloaded after signing in at "
    "https://tianchi.aliyun.com/dataset/dataDetail?dataId=95414",
}
OFFICIAL_FILES = {  # task -> its files as its origin names them (train, dev, test): conf/data/<task>.yaml's too
    "afqmc": ("train.json", "dev.json", "test.json"),
    "cmnli": ("train.json", "dev.json", "test.json"),
    "ocnli": ("train.50k.json", "dev.json", "test.json"),
    "pawsx": ("translated_train.tsv", "dev_2k.tsv", "test_2k.tsv"),
    "lcqmc": ("train.tsv", "dev.tsv", "test.tsv"),
    "bq": ("train.tsv", "dev.tsv", "test.tsv"),
    "chip_sts": ("CHIP-STS_train.json", "CHIP-STS_dev.json", "CHIP-STS_test.json"),
}
UNPACKED = ".afqmc_exp_unpacked.json"  # in a data.dir: the files unpacking put there (it may add more)


def archive_for(task: str, file_name: str) -> Archive | None:
    """The archive of ``task`` that holds ``file_name``; None when no archive of the task's does."""
    return next((a for a in ARCHIVES.values() if task in a.tasks and file_name in a.members), None)


def offline() -> bool:
    """The Hub's offline switches (``HF_HUB_OFFLINE=1``, ``=true``...: one answer, ``hub.offline``'s), or ours."""
    return hub_offline() or os.environ.get("AFQMC_EXP_OFFLINE", "").strip().lower() in TRUE


def tasks_of(folder: Path) -> list[str]:
    """The tasks whose official training and dev files are all in ``folder`` (several share names)."""
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return [task for task, files in OFFICIAL_FILES.items() if set(files[:2]) <= present]


def other_task_message(task: str, folder: Path, names: list[str]) -> str | None:
    """When ``folder`` lacks ``names`` but holds another task's official files: one line that names that task."""
    found = tasks_of(folder)
    others = [t for t in found if t != task]
    if task not in OFFICIAL_FILES or task in found or not others:  # a user's own task (data=pairs) names its files
        return None  # as it likes, and the task's own names (AFQMC's are CMNLI's too) are not another task's folder
    files = ", ".join(OFFICIAL_FILES[others[0]][:2])
    options = " or ".join(f"data={t}" for t in others)
    return (f"{folder}: holds {' or '.join(others)}'s files ({files}), not {task}'s ({', '.join(names)} missing); "
            f"to train on them, add {options} to the command")  # fmt: skip


def foreign_files(folder: Path) -> list[str]:
    """The files in ``folder`` that no unpacking put there (hidden ones aside): nothing is unpacked beside them."""
    if not folder.is_dir():
        return []
    ours = set(_unpacked(folder))
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name not in ours)


def _unpacked(folder: Path) -> list[str]:
    try:
        return list(json.loads((folder / UNPACKED).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def missing_message(task: str, target: Path, names: list[str], reason: str, archive: Archive | None) -> str:
    shown = ", ".join(names)
    if archive is None:
        where = ELSEWHERE.get(task, "this task has no official archive to download")
        return (f"{target}: {shown} not there; {where}. Put the files into {target}, or point data.dir at a folder "
                "that holds them")  # fmt: skip
    verb = "unzip" if archive.url.endswith(".zip") else "unpack"
    return (f"{target}: {task} files {shown} are not there and {reason}. Download {archive.url} on a machine with "
            f"internet, {verb} it into {target}, or point data.dir at a folder that holds them (e.g. "
            "data.dir=../shared/data/afqmc)")  # fmt: skip


def not_unpacked_beside(task: str, target: Path, names: list[str], others: list[str], keys: list[str]) -> str:
    """One line for a folder of the user's files that lacks some of the task's: nothing is unpacked into it."""
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    optional = f", set {' '.join(f'{k}=null' for k in keys)}" if keys else ""
    return (f"{target}: {', '.join(names)} not there, and the folder holds other files ({shown}), so the official "
            f"{task} files are not unpacked into it: put {', '.join(names)} there{optional}, or point data.dir at an "
            "empty folder to download them")  # fmt: skip


def fetch_into(task: str, target: Path, names: list[str], url: str | None = None, timeout_s: float = 30.0) -> None:
    """Put the missing files ``names`` into ``target`` from the archive that holds them (``url`` replaces its
    address, e.g. a mirror)."""
    found = [archive_for(task, name) for name in names]
    if None in found:
        raise DataError(missing_message(task, target, names, "no known archive holds them", None))
    for archive in {a.url: a for a in found}.values():
        if url:
            archive = replace(archive, url=url)
        zipped = _cached_archive(archive, task, target, names, timeout_s)
        _unpack(zipped, archive, target, [n for n in names if n in archive.members])


def _cached_archive(archive: Archive, task: str, target: Path, names: list[str], timeout_s: float) -> Path:
    cache = cache_root()
    path, digest_path = cache / archive.file_name, cache / f"{archive.file_name}.sha256"
    if not path.exists():
        if offline():
            reason = "offline mode is set (HF_HUB_OFFLINE/AFQMC_EXP_OFFLINE)"
            raise DataError(missing_message(task, target, names, reason, archive))
        _download(archive, path, digest_path, lambda why: DataError(missing_message(task, target, names, why, archive)),
                  timeout_s)  # fmt: skip
    digest = file_digest(path)
    if digest_path.exists() and digest_path.read_text().strip() != digest:
        raise DataError(f"{path}: checksum differs from the one recorded at download; delete the file and its "
                        ".sha256 to fetch it again")  # fmt: skip
    return path


def _download(archive: Archive, path: Path, digest_path: Path, failed, timeout_s: float) -> None:
    """The archive written into a staging file of its own (``files.replaced_file``) and put in place once whole, its
    checksum recorded first, the same way: two commands fetching it at once neither truncate nor rename away each
    other's files."""
    digest = hashlib.sha256()
    log.info("downloading %s", archive.url)
    try:
        with urllib.request.urlopen(archive.url, timeout=timeout_s) as response, \
                replaced_file(path, binary=True) as out:  # fmt: skip
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
            with replaced_file(digest_path) as recorded:  # whole or absent for a command that checks it meanwhile
                recorded.write(digest.hexdigest() + "\n")
    except OSError as err:
        raise failed(f"download of {archive.url} failed: {err}") from None


def _unpack(path: Path, archive: Archive, target: Path, names: list[str]) -> None:
    """The named members of a zip or tar archive, written into ``target`` under their names."""
    try:
        members = _read_members(path, archive, names)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: not the expected archive ({err}); delete it to fetch it again") from None
    target.mkdir(parents=True, exist_ok=True)
    record = target / UNPACKED  # first: a kill after a file lands still leaves it known as ours
    with replaced_file(record) as out:
        out.write(json.dumps({"files": sorted({*_unpacked(target), *members})}) + "\n")
    for name, data in members.items():
        with replaced_file(target / name, binary=True) as out:
            out.write(data)


def _read_members(path: Path, archive: Archive, names: list[str]) -> dict[str, bytes]:
    def find(listing: list[str], name: str) -> str:
        inner = archive.members[name]
        found = [m for m in listing if m == inner or m.endswith("/" + inner)]
        if not found:
            raise zipfile.BadZipFile(f"it lacks {inner}")
        return found[0]

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zipped:
            if zipped.testzip() is not None:
                raise zipfile.BadZipFile("a member fails its CRC check")
            return {name: zipped.read(find(zipped.namelist(), name)) for name in names}
    with tarfile.open(path) as tarred:
        listing = [m.name for m in tarred.getmembers() if m.isfile()]
        return {name: tarred.extractfile(find(listing, name)).read() for name in names}
