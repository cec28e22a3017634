"""Tokenized files on disk: each file is tokenized once per tokenizer and length, then memory-mapped by every
run, sweep job and process that reads it again.

Why it looks like this:

* **Flat arrays, not objects.** A file's pairs are four arrays (:class:`TokenArrays`): every pair's token ids
  one after another (``uint16`` when the vocabulary has at most 65,536 tokens, as BERT's 21,128 and MiniLM's
  30,522 do; ``int32`` otherwise), their token types (``uint8``), where each pair starts (``int64``) and its
  class id (``int16``, -1 unlabelled): about 3 bytes a token. A batch is gathered from them by index
  (``split``, ``batching``), so the operating system pages in what is read and N processes share one copy.
  A simpler alternative to HF ``datasets`` (Arrow files, memory-mapped, with a cached ``map``): it needs no
  Arrow table per batch, and its key is ours to state (below). docs/data.md has the figures.
* **The key is explicit** (:func:`cache_key`): the file's bytes (SHA-256), how it is read (format, fields,
  labels, dropped labels), the tokenizer (:func:`tokenizer_digest`), ``max_length``, the truncation and this
  code's ``CODE_VERSION``. Changing any of them makes a new entry; nothing is looked up by path or time.
  HF ``datasets`` keys its cache by a pickle of the tokenizer, which changes when the tokenizer is merely
  called with truncation (datasets #3847, #5985, #6179); ours hashes the tokenizer's own serialisation with
  its truncation and padding state left out, plus the settings that change ids (``truncation_side``).
* **A cache is complete or absent.** An entry is written into a staging folder and renamed into place once
  its ``meta.json`` is written; a kill mid-write leaves only the staging folder, which the next builder
  removes. One process builds an entry (a file lock, which the operating system releases when a process
  dies); the others wait for it and then map it.
* **A damaged entry heals itself.** A crash of the machine (not of the process) can leave an entry whose data
  never reached the disk: no ``meta.json``, a file cut to 0 bytes. Before an entry is mapped it is checked
  against its ``meta.json`` (readable, this key's, every file of the size its counts say, the small files'
  SHA-256); one that does not add up is removed and built again, with one warning, instead of failing this run
  and every later one. A cache that cannot be written (read-only, another user's) is ``cache.cache_root``'s
  business (a temporary one), and a full disk while writing is one line naming the cache.
* **Checked files are remembered too** (:func:`checked_stats`): a file's full check (``formats``) is
  recorded under its digest and reading settings, so a run on files checked before reads only their bytes
  (to hash them) before it starts, however large they are.
* **Tokenizing uses the fast tokenizer's Rust backend directly** (``encode_batch_fast`` on a copy with the
  run's truncation), which gives the same ids as calling the tokenizer (tested) in about three quarters of
  the time; a tokenizer without a fast backend is called as usual.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..cache import cache_root, file_digest
from ..files import replaced_file
from .formats import DataError, FileStats, Pair, PairReader, ReadSpec

log = logging.getLogger(__name__)

CODE_VERSION = 1  # raise when what is cached (or how a file is checked) changes: every entry is then rebuilt
CHUNK_PAIRS = 8192  # pairs tokenized per call: the Rust tokenizer parallelises within a call
TRUNCATION = "longest_first"  # trims the longer sentence first, as BERT's recipe and the tutorial do
FILES = {"ids": "ids.bin", "type_ids": "type_ids.bin", "offsets": "offsets.bin", "labels": "labels.bin"}


@dataclass
class TokenArrays:
    """Tokenized pairs as flat arrays: pair ``i`` is ``ids[offsets[i]:offsets[i + 1]]`` (see the docstring)."""

    ids: np.ndarray
    type_ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int32)

    def gather(self, rows: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids and token types of ``rows``, each padded (with ``pad_id`` and type 0) to ``width``."""
        starts, lengths = self.offsets[rows], self.lengths[rows]
        columns = np.arange(width)
        inside = columns < lengths[:, None]
        positions = np.where(inside, starts[:, None] + columns, 0)
        ids = np.where(inside, self.ids[positions], pad_id).astype(np.int64)
        return ids, np.where(inside, self.type_ids[positions], 0).astype(np.int64)

    @classmethod
    def load(cls, folder: Path) -> TokenArrays:
        meta = json.loads((folder / "meta.json").read_text())
        layout = file_layout(meta)
        return cls(**{k: np.memmap(folder / FILES[k], dtype=dtype, mode="r", shape=(count,))
                      for k, (dtype, count) in layout.items()})  # fmt: skip


def file_layout(meta: dict) -> dict[str, tuple[str, int]]:
    """Each array's dtype and length, as an entry's ``meta.json`` gives them."""
    tokens, pairs = int(meta["tokens"]), int(meta["pairs"])
    return {"ids": (meta["id_dtype"], tokens), "type_ids": ("uint8", tokens), "offsets": ("int64", pairs + 1),
            "labels": ("int16", pairs)}  # fmt: skip


CHECKSUMMED = ("offsets", "labels")  # small (10 bytes a pair): hashed on every use; the token arrays are sized


class _Encoder:
    """Tokenizes chunks of pairs with ``max_length`` truncation (see the module docstring)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.id_dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.int32
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.backend = None
        if backend is not None and tokenizer.is_fast and hasattr(backend, "encode_batch_fast"):
            self.backend = copy.deepcopy(backend)  # the caller's tokenizer keeps its own truncation state
            self.backend.no_padding()
            self.backend.enable_truncation(max_length, strategy=TRUNCATION, direction=tokenizer.truncation_side)

    def __call__(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> tuple[list, list]:
        if self.backend is not None:
            encodings = self.backend.encode_batch_fast(list(zip(texts_a, texts_b, strict=True)))
            return [e.ids for e in encodings], [e.type_ids for e in encodings]
        encoded = self.tokenizer(list(texts_a), list(texts_b), truncation=TRUNCATION, max_length=self.max_length,
                                 padding=False, return_token_type_ids=True, return_attention_mask=False)  # fmt: skip
        return encoded["input_ids"], encoded["token_type_ids"]

    def arrays(self, pairs: Sequence[Pair]) -> dict[str, np.ndarray]:
        """One chunk as flat arrays (offsets relative to the chunk, without the leading 0)."""
        ids, types = self([p.text_a for p in pairs], [p.text_b for p in pairs])
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        total = int(lengths.sum())
        return {
            "ids": np.fromiter(itertools.chain.from_iterable(ids), dtype=self.id_dtype, count=total),
            "type_ids": np.fromiter(itertools.chain.from_iterable(types), dtype=np.uint8, count=total),
            "offsets": np.cumsum(lengths),
            "labels": np.fromiter((-1 if p.label is None else p.label for p in pairs), np.int16, count=len(pairs)),
        }


def chunks(pairs: Iterable[Pair], size: int | None = None) -> Iterable[list[Pair]]:
    """Lists of ``size`` pairs (default ``CHUNK_PAIRS``), the last one shorter."""
    iterator = iter(pairs)
    while chunk := list(itertools.islice(iterator, size or CHUNK_PAIRS)):
        yield chunk


def encode_pairs(pairs: Iterable[Pair], tokenizer, max_length: int) -> TokenArrays:
    """Pairs tokenized in memory (predicting a file chunk by chunk, tests); runs use :func:`tokenized_file`."""
    encoder, parts, base = _Encoder(tokenizer, max_length), [], 0
    for chunk in chunks(pairs):
        arrays = encoder.arrays(chunk)
        arrays["offsets"] = arrays["offsets"] + base
        base = int(arrays["offsets"][-1])
        parts.append(arrays)
    joined = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64) for k in FILES}
    joined["offsets"] = np.concatenate([[0], joined["offsets"]]).astype(np.int64)
    return TokenArrays(**joined)


# ------------------------------------------------------------------------------------------ keys
def tokenizer_digest(tokenizer) -> str:
    """What decides a tokenizer's ids: its full serialisation (vocabulary, normalisation, pre-tokenisation, the
    template adding [CLS]/[SEP]) without the truncation and padding state calls change; else (a tokenizer with
    no fast backend) its class, vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items()),
                 "special": tokenizer.special_tokens_map}  # fmt: skip
    state["truncation_side"] = getattr(tokenizer, "truncation_side", "right")
    return hashlib.sha256(json.dumps(state, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def token_key(digest: str, spec: ReadSpec, tokenizer_sha: str, max_length: int) -> dict:
    """Everything a tokenized file depends on (see the module docstring); ``tokenizer_sha`` is
    :func:`tokenizer_digest`'s (computed once for all of a run's files: it serialises the whole vocabulary)."""
    return {"file_sha256": digest, "read": spec.describe(), "tokenizer": tokenizer_sha, "max_length": max_length,
            "truncation": TRUNCATION, "code_version": CODE_VERSION}  # fmt: skip


# ------------------------------------------------------------------------------------------ the cache
def tokens_root() -> Path:
    return cache_root() / "tokens"


class _Entry:
    """One cache entry: built once under a lock, complete or absent, checked before use (see the module docstring)."""

    def __init__(self, root: Path, key: str):
        self.folder, self.root = root / key, root
        self.lock_path = root / f"{key}.lock"
        self.lock = None  # taken by __enter__

    def usable(self, key: dict) -> bool:
        return self.folder.is_dir() and self.damage(key) is None

    def damage(self, key: dict) -> str | None:
        """Why the entry's folder cannot be mapped for ``key``, or None when it adds up."""
        try:
            meta = json.loads((self.folder / "meta.json").read_text())
            if meta.get("key") != key:
                return "its meta.json names another key"
            for name, (dtype, count) in file_layout(meta).items():
                size, expected = (self.folder / FILES[name]).stat().st_size, np.dtype(dtype).itemsize * count
                if size != expected:
                    return f"{FILES[name]} holds {size} bytes, not {expected}"
            for name, digest in meta.get("sha256", {}).items():
                if file_digest(self.folder / FILES[name]) != digest:
                    return f"{FILES[name]} does not match its checksum"
        except FileNotFoundError as error:
            return f"{Path(error.filename).name} is missing"
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"its meta.json cannot be read ({error})"
        return None

    def clear(self, key: dict) -> None:
        """Remove a damaged entry (under the lock), saying why; nothing when there is none."""
        if not self.folder.exists():
            return
        log.warning("%s: damaged (%s); it is removed and rebuilt", self.folder, self.damage(key))
        aside = self.root / f".{self.folder.name}.{os.getpid()}.damaged.tmp"
        os.replace(self.folder, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def __enter__(self):
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(self.lock_path)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process writing %s", self.folder)
            self.lock.acquire()
        for stale in self.root.glob(f".{self.folder.name}.*.tmp"):  # a builder killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        return self

    def __exit__(self, *exc):
        self.lock.release()

    def staging(self) -> Path:
        folder = self.root / f".{self.folder.name}.{os.getpid()}.tmp"
        folder.mkdir()
        return folder


def tokenized_file(path: Path, spec: ReadSpec, tokenizer, max_length: int, require_labels: bool,
                   digest: str | None = None, tokenizer_sha: str | None = None) -> TokenArrays:  # fmt: skip
    """``path``'s pairs, tokenized: from the cache, or read, checked, tokenized and cached now (``digest`` and
    ``tokenizer_sha``: the file's and the tokenizer's digests, where the caller has them already)."""
    key = token_key(digest or file_digest(path), spec, tokenizer_sha or tokenizer_digest(tokenizer), max_length)
    entry = _Entry(tokens_root(), cache_key(key))
    if entry.usable(key):
        log.info("%s: tokens from the cache (%s)", path.name, entry.folder)
    else:
        with entry:
            if not entry.usable(key):  # another process may have built it while this one waited
                entry.clear(key)
                _build_or_say(entry, path, spec, tokenizer, max_length, require_labels, key)
    return TokenArrays.load(entry.folder)


def _build_or_say(entry: _Entry, path: Path, spec: ReadSpec, tokenizer, max_length: int, require_labels: bool,
                  key: dict) -> None:  # fmt: skip
    """``_build``, with a full disk said in one line (the staging folder is gone: nothing half-written stays)."""
    try:
        _build(entry, path, spec, tokenizer, max_length, require_labels, key)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DataError(
            f"{path}: no space left on the device of the token cache ({entry.root}) while writing its "
            "tokens; free some space, or set AFQMC_EXP_CACHE to a folder on another disk"
        ) from None


def _build(entry: _Entry, path: Path, spec: ReadSpec, tokenizer, max_length: int, require_labels: bool,
           key: dict) -> None:  # fmt: skip
    started, staging = time.perf_counter(), entry.staging()
    try:
        reader, encoder = PairReader(path, spec, require_labels), _Encoder(tokenizer, max_length)
        base, digests = 0, {name: hashlib.sha256() for name in CHECKSUMMED}
        with contextlib.ExitStack() as stack:
            files = {k: stack.enter_context(open(staging / name, "wb")) for k, name in FILES.items()}
            _write(files, digests, "offsets", np.zeros(1, np.int64))
            for chunk in chunks(reader):
                arrays = encoder.arrays(chunk)
                arrays["offsets"] += base
                base = int(arrays["offsets"][-1])
                for name, array in arrays.items():
                    _write(files, digests, name, array)
        meta = {"pairs": reader.stats.pairs, "tokens": base, "id_dtype": np.dtype(encoder.id_dtype).name,
                "source": str(path), "stats": asdict(reader.stats), "key": key,
                "sha256": {name: digest.hexdigest() for name, digest in digests.items()}}  # fmt: skip
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(staging, entry.folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: %d pairs tokenized in %.1f s (%d tokens), cached in %s", path.name, meta["pairs"],
             time.perf_counter() - started, meta["tokens"], entry.folder)  # fmt: skip


def _write(files: dict, digests: dict, name: str, array: np.ndarray) -> None:
    data = array.tobytes()
    files[name].write(data)
    if name in digests:
        digests[name].update(data)


def checked_stats(path: Path, spec: ReadSpec, require_labels: bool, digest: str) -> FileStats:
    """What a full check of ``path`` found: remembered from an earlier check of the same bytes and settings,
    or checked now (raising ``DataError`` on the first bad line) and remembered."""
    key = cache_key({"file_sha256": digest, "read": spec.describe(), "require_labels": require_labels,
                     "code_version": CODE_VERSION})  # fmt: skip
    memo = cache_root() / "checked" / f"{key}.json"
    if memo.exists():
        try:
            return FileStats(**json.loads(memo.read_text()))
        except (ValueError, TypeError):  # a damaged memo: check again
            pass
    reader = PairReader(path, spec, require_labels)
    for _ in reader:
        pass
    with replaced_file(memo) as out:
        out.write(json.dumps(asdict(reader.stats)))
    return reader.stats
