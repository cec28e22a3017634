"""Official archives: fetched once into the cache, checked, and unpacked into ``data.dir``.

Where a task's origin publishes its files (the CLUE zips for AFQMC, CMNLI, OCNLI and the diagnostics set;
the PAWS-X tarball), a folder that lacks them gets them from there; LCQMC, BQ and CHIP-STS are licensed by
their origins, so the message says where to ask for them instead. No origin publishes a checksum, so an
archive is trusted on first use: its SHA-256 is recorded beside the cached copy when it is downloaded and
checked on every later use, and a corrupted or swapped cache is noticed instead of silently trained on.
Only the members a task names are read out of an archive (matched by the end of their path), so an archive
cannot write anywhere else. Offline (``HF_HUB_OFFLINE=1`` or ``AFQMC_EXP_OFFLINE=1``) a missing file fails
at once, naming the archive and where to put its files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_root, file_digest
from .formats import DataError

log = logging.getLogger(__name__)

CLUE = "https://storage.googleapis.com/cluebenchmark/tasks"


@dataclass(frozen=True)
class Archive:
    url: str
    members: dict[str, str]  # file name in data.dir -> the end of its path inside the archive

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[1]


ARCHIVES = {
    "afqmc": Archive(f"{CLUE}/afqmc_public.zip", {n: n for n in ("train.json", "dev.json", "test.json")}),
    "cmnli": Archive(f"{CLUE}/cmnli_public.zip", {n: n for n in ("train.json", "dev.json", "test.json")}),
    "ocnli": Archive(f"{CLUE}/ocnli_public.zip", {n: n for n in ("train.50k.json", "dev.json", "test.json")}),
    "clue_diagnostics": Archive(f"{CLUE}/clue_diagnostics_public.zip",
                                {"diagnostics_test.json": "diagnostics_test.json"}),
    "pawsx": Archive("https://storage.googleapis.com/paws/pawsx/x-final.tar.gz",
                     {n: f"zh/{n}" for n in ("translated_train.tsv", "dev_2k.tsv", "test_2k.tsv")}),
}  # fmt: skip
ELSEWHERE = {  # tasks whose origin licenses its files: where to ask for them
    "lcqmc": "LCQMC is distributed by its authors at Harbin Institute of Technology (Shenzhen) under a licence: "
    "request it at http://icrc.hitsz.edu.cn/info/1037/1146.htm",
    "bq": "the BQ Corpus is distributed by its authors at Harbin Institute of Technology (Shenzhen) under a "
    "licence: request it at http://icrc.hitsz.edu.cn/info/1037/1162.htm",
    "chip_sts": "CHIP-STS is part of CBLUE, downloaded after signing in at "
    "https://tianchi.aliyun.com/dataset/dataDetail?dataId=95414",
}


def archive_for(task: str, file_name: str) -> Archive | None:
    """The archive that holds ``file_name``: the task's own, else any known one (e.g. the diagnostics set)."""
    own = ARCHIVES.get(task)
    if own is not None and file_name in own.members:
        return own
    return next((a for a in ARCHIVES.values() if file_name in a.members), None)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("AFQMC_EXP_OFFLINE") == "1"


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


def fetch_into(task: str, target: Path, names: list[str], url: str | None = None, timeout_s: float = 30.0) -> None:
    """Put the missing files ``names`` into ``target`` from the archive that holds them (``url`` replaces its
    address, e.g. a mirror)."""
    found = [archive_for(task, name) for name in names]
    if None in found:
        raise DataError(missing_message(task, target, names, "no known archive holds them", None))
    for archive in {a.url: a for a in found}.values():
        if url:
            archive = Archive(url, archive.members)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    log.info("downloading %s", archive.url)
    try:
        with urllib.request.urlopen(archive.url, timeout=timeout_s) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise failed(f"download of {archive.url} failed: {err}") from None
    digest_path.write_text(file_digest(partial) + "\n")
    os.replace(partial, path)


def _unpack(path: Path, archive: Archive, target: Path, names: list[str]) -> None:
    """The named members of a zip or tar archive, written into ``target`` under their names."""
    try:
        members = _read_members(path, archive, names)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: not the expected archive ({err}); delete it to fetch it again") from None
    target.mkdir(parents=True, exist_ok=True)
    for name, data in members.items():
        staged = target / f".{name}.part"
        staged.write_bytes(data)
        os.replace(staged, target / name)


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
