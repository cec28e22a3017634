"""AFQMC data: read and validate JSON-lines files, fetch the official zip, batch sentence pairs fast.

Why it looks like this:

* Files are validated completely *before* any model is loaded or any run is opened, so one bad line
  costs the user a second, not an hour; every error names the file, the line and the fix.
* Each split is tokenized once, in one call of the fast tokenizer, without padding. Batches are padded
  only to their own longest pair (dynamic padding), and the training order groups pairs of similar length
  ("length-grouped batching"): the epoch's random permutation is cut into chunks of ``group_batches``
  batches, each chunk is sorted by length and split into batches, and the batch order is shuffled again.
  Every pair is still seen exactly once per epoch in a random batch, but a batch carries little padding
  instead of a large share (the README's performance section has the figures). Evaluation sorts the
  whole split by length (order does not matter there) and maps the predictions back to file order.
* The training order is a pure function of ``(seed, epoch)``, which makes runs reproducible and lets a
  resumed run skip exactly the batches it had already trained on.
* Two settings depend on the device, and ``auto`` (the default) picks them once it is known
  (``AfqmcData.for_device``): on a GPU, batch widths are rounded up to a multiple of 8 (tensor cores
  work in tiles of 8, and fewer distinct shapes mean fewer kernel plans and compiled graphs) and
  evaluation batches are large (a GPU is far from full at 32 pairs); on a CPU padding is pure extra
  work and moderate evaluation batches stay in cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .cache import cache_root

log = logging.getLogger(__name__)

OFFICIAL_ZIP_URL = "https://storage.googleapis.com/cluebenchmark/tasks/afqmc_public.zip"
SPLIT_FILES = ("train.json", "dev.json", "test.json")


class DataError(ValueError):
    """A data file cannot be used; the message names the file, the line and what to do."""


@dataclass
class PairExample:
    sentence1: str
    sentence2: str
    label: int | None  # None for the unlabelled test set
    id: object = None  # the `id` field of the official test set, else the 0-based line index


# --------------------------------------------------------------------------------------------- reading
def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{path}: file not found. Check the path, or set data.dir to the folder holding {'/'.join(SPLIT_FILES)}."
        ) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a JSON-lines file.") from None
    if not raw.strip():
        raise DataError(
            f"{path}: the file is empty (or only blank lines). It must hold one JSON object per line, e.g. "
            '{"sentence1": "...", "sentence2": "...", "label": "0"}.'
        )
    try:
        return raw.decode("utf-8-sig")  # -sig: a UTF-8 byte-order mark is accepted and dropped
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: bytes that are not UTF-8 (at byte {err.start}). Chinese data often comes as "
            f"GBK; convert it with: iconv -f GBK -t UTF-8 '{path}' > fixed.json"
        ) from None


def _label(value: object, where: str) -> int:
    if not isinstance(value, bool) and value in (0, 1, "0", "1"):  # JSON true/false would pass as 1/0
        return int(value)
    raise DataError(
        f"{where}: label is {json.dumps(value, ensure_ascii=False)}; AFQMC labels are "
        '"0" (different meaning) or "1" (same meaning), as a string or an integer.'
    )


def read_pairs(path: str | os.PathLike, require_labels: bool = True) -> list[PairExample]:
    """Read an AFQMC JSON-lines file, checking every line.

    Accepted: labels "0"/"1" or 0/1, a UTF-8 BOM, CRLF line ends, blank lines (skipped). Lines end at "\n"
    only (JSON strings may hold U+2028 or U+0085, which ``str.splitlines`` would cut at).
    ``require_labels=False`` reads the unlabelled test set (an ``id`` field is kept when present); a file
    is either labelled on every line or on none, and ids, where given, are unique.
    """
    path = Path(path)
    text = _decode(path)
    if text.lstrip().startswith("["):
        raise DataError(
            f"{path}:1: the file is one JSON array; AFQMC files are JSON lines (one object per "
            'line). Convert with: python -c "import json,sys; [print(json.dumps(o, '
            f"ensure_ascii=False)) for o in json.load(open(sys.argv[1]))]\" '{path}' > fixed.json"
        )
    examples: list[PairExample] = []
    first_line, id_lines = 0, {}  # the first pair's line; explicit id -> its line
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        example, has_id = _parse_line(line.removesuffix("\r"), f"{path}:{number}", require_labels, len(examples))
        if examples and (example.label is None) != (examples[0].label is None):
            labelled, unlabelled = (number, first_line) if example.label is not None else (first_line, number)
            raise DataError(
                f"{path}:{number}: line {labelled} has a label and line {unlabelled} has none; a file is labelled on "
                "every line (it is scored) or on none (it is predicted). Fix the lines or split the file."
            )
        key = json.dumps(example.id, ensure_ascii=False)
        if has_id and key in id_lines:
            raise DataError(
                f"{path}:{number}: id {key} is also on line {id_lines[key]}; ids must be unique (predictions are "
                "matched by id)"
            )
        if has_id:
            id_lines[key] = number
        first_line = first_line or number
        examples.append(example)
    return examples


def _parse_line(line: str, where: str, require_labels: bool, default_id: int) -> tuple[PairExample, bool]:
    """The pair on one line, and whether the line names its id."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: not valid JSON ({err.msg}, column {err.colno}). Each line must be one "
            'object like {"sentence1": "...", "sentence2": "...", "label": "0"}.'
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{where}: a JSON {type(obj).__name__}, expected an object with sentence1, sentence2 and label."
        )
    for key in ("sentence1", "sentence2"):
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            state = "missing" if key not in obj else f"{json.dumps(value, ensure_ascii=False)}"
            raise DataError(f"{where}: {key} is {state}; it must be a non-empty string. Fix or delete this line.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataError(
                f"{where}: {key} holds an unpaired surrogate escape ({json.dumps(value[err.start])}), which is not "
                "text; fix or delete this line."
            ) from None
    if "label" in obj:
        label = _label(obj["label"], where)
    elif require_labels:
        raise DataError(
            f'{where}: no label. Training and evaluation need a label "0" or "1" on '
            "every line; to score an unlabelled file use predict.py."
        )
    else:
        label = None
    return PairExample(obj["sentence1"], obj["sentence2"], label, obj.get("id", default_id)), "id" in obj


# ------------------------------------------------------------------------------------- official data
def download_official(target: Path, url: str = OFFICIAL_ZIP_URL, timeout_s: float = 30.0) -> None:
    """Fetch CLUE's ``afqmc_public.zip`` into a cache, verify it and unpack the three splits into ``target``.

    CLUE publishes no checksum, so verification is structural (a sound zip holding the three files, every
    line of which parses) plus a SHA-256 recorded beside the cached zip on first download and checked
    on every later use, so a corrupted or swapped cache is noticed instead of silently trained on.
    """
    cache = cache_root()
    zip_path, digest_path = cache / "afqmc_public.zip", cache / "afqmc_public.zip.sha256"
    if not zip_path.exists():
        _fetch(url, zip_path, digest_path, target, timeout_s)
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    if digest_path.exists() and digest_path.read_text().strip() != digest:
        raise DataError(
            f"{zip_path}: checksum differs from the one recorded at download; delete the file and "
            "its .sha256 to fetch it again."
        )
    _unpack(zip_path, target)
    for name in SPLIT_FILES:  # structural check of what was unpacked
        read_pairs(target / name, require_labels=name != "test.json")


def _fetch(url: str, zip_path: Path, digest_path: Path, target: Path, timeout_s: float) -> None:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("AFQMC_EXP_OFFLINE") == "1":
        raise DataError(_missing_message(target, "offline mode is set (HF_HUB_OFFLINE/AFQMC_EXP_OFFLINE)"))
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_suffix(".part")
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise DataError(_missing_message(target, f"download of {url} failed: {err}")) from None
    digest_path.write_text(hashlib.sha256(partial.read_bytes()).hexdigest() + "\n")
    os.replace(partial, zip_path)


def _unpack(zip_path: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            if archive.testzip() is not None:
                raise zipfile.BadZipFile("a member fails its CRC check")
            members = {Path(name).name: name for name in archive.namelist() if not name.endswith("/")}
            missing = [name for name in SPLIT_FILES if name not in members]
            if missing:
                raise zipfile.BadZipFile(f"it lacks {', '.join(missing)}")
            target.mkdir(parents=True, exist_ok=True)
            for name in SPLIT_FILES:
                (target / name).write_bytes(archive.read(members[name]))
    except zipfile.BadZipFile as err:
        raise DataError(f"{zip_path}: not the AFQMC archive ({err}); delete it to fetch it again.") from None


def _missing_message(target: Path, reason: str) -> str:
    return (
        f"{target}: AFQMC files {', '.join(SPLIT_FILES)} are not there and {reason}. Download "
        f"{OFFICIAL_ZIP_URL} on a machine with internet, unzip it into {target}, or point data.dir at a "
        "folder that holds them (e.g. data.dir=../shared/data/afqmc)."
    )


# ------------------------------------------------------------------------------------ tokenized split
@dataclass
class EncodedPairs:
    """One split, tokenized once: token ids per pair (unpadded), labels, and ids for predictions."""

    examples: list[PairExample]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: torch.Tensor | None
    lengths: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = [len(ids) for ids in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> int:
        return index  # the collate function gathers by index; see PairCollator


def encode_pairs(examples: list[PairExample], tokenizer, max_length: int) -> EncodedPairs:
    encoded = tokenizer(
        [e.sentence1 for e in examples],
        [e.sentence2 for e in examples],
        truncation=True,
        max_length=max_length,
        padding=False,
        return_token_type_ids=True,
        return_attention_mask=False,
    )
    labelled = all(e.label is not None for e in examples)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long) if labelled else None
    return EncodedPairs(examples, encoded["input_ids"], encoded["token_type_ids"], labels)


def auto_eval_batch_size(device_type: str) -> int:
    return 256 if device_type == "cuda" else 32


def auto_pad_to_multiple_of(device_type: str) -> int:
    return 8 if device_type == "cuda" else 1


def padded_table(rows: list[list[int]], lengths: list[int], width: int, pad: int) -> torch.Tensor:
    """``rows`` as one (rows, width) tensor padded with ``pad``, filled in one scatter (no loop over rows)."""
    counts = np.asarray(lengths, dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(counts.sum()))
    row = np.repeat(np.arange(len(counts)), counts)
    column = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.full((len(counts), width), pad, dtype=np.int64)
    table[row, column] = flat
    return torch.from_numpy(table)


class PairCollator:
    """Pads a list of indices of an :class:`EncodedPairs` to the batch's longest pair, rounded up to a
    multiple of ``pad_to_multiple_of`` (the padding is masked: the model's answer does not change).

    The split is padded once, into one table per input; a batch is then a few whole-tensor operations
    (gather rows, cut to the width) instead of a Python loop over its pairs, whose cost is small beside a
    CPU step but not beside a GPU step of a few milliseconds, nor for evaluation's 256-pair batches (the
    README's performance section has the figures)."""

    def __init__(self, split: EncodedPairs, pad_token_id: int, pad_to_multiple_of: int = 1):
        self.labels, self.multiple = split.labels, pad_to_multiple_of
        self.lengths = torch.tensor(split.lengths, dtype=torch.long)
        widest = self.width(max(split.lengths, default=1))
        self.input_ids = padded_table(split.input_ids, split.lengths, widest, pad_token_id)
        self.token_type_ids = padded_table(split.token_type_ids, split.lengths, widest, 0)

    def width(self, longest: int) -> int:
        return -(-longest // self.multiple) * self.multiple

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[index]
        width = self.width(int(lengths.max()))
        batch = {
            "input_ids": self.input_ids[index, :width],
            "token_type_ids": self.token_type_ids[index, :width],
            "attention_mask": (torch.arange(width) < lengths[:, None]).long(),
            "index": index,
        }
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        return batch


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Random batches of similar-length pairs; order fixed by ``(seed, epoch)``. See the module docstring.

    With ``num_shards`` processes, ``batches()`` is still the epoch's list of *global* batches (the same
    on every process, and the same as a single process's), and iterating yields this process's slice of
    each one: balanced, contiguous, never empty. A short last batch with fewer pairs than processes is
    merged into the batch before it. So the processes together see every pair exactly once per epoch,
    with no padding by repeated pairs (which is what sharding a finished loader has to do), and the trainer
    weights each slice by its share of the global batch (see ``trainer.optimizer_steps``).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        group_batches: int = 50,
        shuffle: bool = True,
        num_shards: int = 1,
        shard: int = 0,
    ):
        if batch_size < num_shards or len(lengths) < num_shards:
            raise ValueError(
                f"a batch of {batch_size} (of {len(lengths)} pairs) cannot give each of {num_shards} "
                f"processes a pair: set data.batch_size>={num_shards}"
            )
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.group_batches, self.shuffle, self.epoch, self.skip = group_batches, shuffle, 0, 0
        self.num_shards, self.shard = num_shards, shard

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, batches: int) -> None:
        """Drop the first ``batches`` of the next iteration only (a resumed run had trained on them)."""
        self.skip = batches

    def __len__(self) -> int:
        return len(self.batch_sizes())

    def batch_sizes(self) -> list[int]:
        """The sizes of the epoch's global batches, in order: full ones, then the remainder (merged into
        the last full batch when it is too short to give every process a pair). The same every epoch."""
        full, rest = divmod(len(self.lengths), self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest else [])
        if full and 0 < rest < self.num_shards:
            sizes[-2:] = [self.batch_size + rest]
        return sizes

    def batches(self) -> list[list[int]]:
        """The epoch's global batches, in training order."""
        n = len(self.lengths)
        if not self.shuffle:  # evaluation: longest first, so a too-large batch fails at once, not at the end
            order = sorted(range(n), key=lambda i: -self.lengths[i])
            return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=generator).tolist()
        if self.group_batches > 1:
            group = self.group_batches * self.batch_size
            order = [
                i
                for start in range(0, n, group)
                for i in sorted(order[start : start + group], key=lambda i: self.lengths[i])
            ]
        batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.group_batches > 1:  # shuffle the full batches; the short remainder stays last
            full = len(batches) - (len(batches[-1]) < self.batch_size)
            batches = [batches[i] for i in torch.randperm(full, generator=generator).tolist()] + batches[full:]
        if len(batches) > len(self.batch_sizes()):  # a remainder too short to share joins the batch before it
            batches[-2:] = [batches[-2] + batches[-1]]
        return batches

    def shard_of(self, batch: list[int]) -> list[int]:
        """This process's contiguous slice of a global batch (sizes differ by at most one)."""
        size = len(batch)
        return batch[self.shard * size // self.num_shards : (self.shard + 1) * size // self.num_shards]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return (self.shard_of(batch) for batch in self.batches()[skip:])


# ------------------------------------------------------------------------------------- the data group
@dataclass
class AfqmcData:
    """The ``data`` config group: where the splits are and how they are batched.

    ``train_file``/``dev_file``/``test_file`` are names inside ``dir`` (or absolute paths); ``test_file``
    may be unlabelled (then it is only predicted, not scored) or null.
    """

    dir: str
    train_file: str = "train.json"
    dev_file: str = "dev.json"
    test_file: str | None = "test.json"
    max_length: int = 128
    batch_size: int = 16  # the global batch: N processes share each batch, so 1 or N train alike
    eval_batch_size: int | Literal["auto"] = "auto"  # auto: 32 on CPU, 256 on a GPU
    pad_to_multiple_of: int | Literal["auto"] = "auto"  # batch width rounded up; auto: 8 on a GPU, 1 on CPU
    num_workers: int = 0
    group_batches: int = 50  # batches per length-sorted chunk of the shuffled epoch; 1 = plain shuffling
    train_limit: int | None = None  # use only the first N training pairs (debugging)
    dev_limit: int | None = None  # use only the first N dev pairs (debugging)
    download: bool = True  # fetch the official zip when dir lacks the files
    folds: int | None = None  # k-fold: train on the other folds of train+dev, evaluate on fold `fold`
    fold: int = 0
    fold_seed: int = 0  # which pairs go to which fold (stratified by label): fixed while the run's seed varies
    score_test: bool = True  # at the end: metrics on a labelled test file, CLUE predictions for an unlabelled one

    def path(self, name: str) -> Path:
        return Path(self.dir).expanduser() / name

    def for_device(self, device_type: str) -> AfqmcData:
        """A copy with the ``auto`` settings decided for ``device_type`` (see the module docstring)."""
        eval_batch_size, multiple = self.eval_batch_size, self.pad_to_multiple_of
        return replace(
            self,
            eval_batch_size=auto_eval_batch_size(device_type) if eval_batch_size == "auto" else eval_batch_size,
            pad_to_multiple_of=auto_pad_to_multiple_of(device_type) if multiple == "auto" else multiple,
        )

    def load(self) -> dict[str, list[PairExample]]:
        """Read and validate every split (downloading the official data if the folder lacks it)."""
        wanted = {"train": self.train_file, "dev": self.dev_file}
        if self.test_file and self.score_test:  # not read (nor checked) when it would not be used
            wanted["test"] = self.test_file
        if Path(self.dir).expanduser().is_file():
            raise DataError(
                f"data.dir={self.dir}: is a file; data.dir is the folder that holds {', '.join(SPLIT_FILES)} "
                f"(e.g. data.dir={Path(self.dir).parent})"
            )
        missing = [name for name in wanted.values() if not self.path(name).exists()]
        if missing:
            if not self.download or set(missing) - set(SPLIT_FILES):
                raise DataError(_missing_message(Path(self.dir), f"{', '.join(missing)} is missing"))
            download_official(Path(self.dir).expanduser())
        splits = {split: read_pairs(self.path(name), require_labels=split != "test") for split, name in wanted.items()}
        if self.folds:
            splits["train"], splits["dev"] = self.fold_split(splits["train"], splits["dev"])
        splits["train"], splits["dev"] = splits["train"][: self.train_limit], splits["dev"][: self.dev_limit]
        return splits

    def fold_split(self, train: list[PairExample], dev: list[PairExample]) -> tuple[list, list]:
        """Train and dev pooled (ids ``train:<i>``/``dev:<i>``), dealt into ``folds`` folds per label in a
        seeded order; fold ``fold`` is evaluated on, the others trained on. Over ``fold=0..folds-1`` every
        pair is evaluated on exactly once (its out-of-fold prediction)."""
        pool = [
            replace(e, id=f"{split}:{i}")
            for split, rows in (("train", train), ("dev", dev))
            for i, e in enumerate(rows)
        ]
        generator = torch.Generator().manual_seed(self.fold_seed)
        fold_of = {}
        for label in sorted({e.label for e in pool}):
            members = [i for i, e in enumerate(pool) if e.label == label]
            order = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
            offset = len(fold_of)  # continue the deal where the last label stopped: fold sizes stay even
            fold_of.update({i: (offset + k) % self.folds for k, i in enumerate(order)})
        held_out = [e for i, e in enumerate(pool) if fold_of[i] == self.fold]
        return [e for i, e in enumerate(pool) if fold_of[i] != self.fold], held_out

    def loader(
        self,
        split: EncodedPairs,
        pad_token_id: int,
        train: bool,
        seed: int = 0,
        pin_memory: bool = False,
        num_shards: int = 1,
        shard: int = 0,
    ) -> torch.utils.data.DataLoader:
        return make_loader(
            split,
            pad_token_id,
            self.batch_size if train else self.eval_batch_size,
            train=train,
            seed=seed,
            group_batches=self.group_batches,
            num_workers=self.num_workers,
            pin_memory=pin_memory,
            num_shards=num_shards,
            shard=shard,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )


def make_loader(
    split: EncodedPairs,
    pad_token_id: int,
    batch_size: int,
    train: bool,
    seed: int = 0,
    group_batches: int = 50,
    num_workers: int = 0,
    pin_memory: bool = False,
    num_shards: int = 1,
    shard: int = 0,
    pad_to_multiple_of: int = 1,
) -> torch.utils.data.DataLoader:
    """Length-grouped random batches for training (``shard``'s slice of each), length-sorted batches for
    evaluation."""
    sampler = LengthGroupedBatchSampler(
        split.lengths,
        batch_size,
        seed=seed,
        group_batches=group_batches,
        shuffle=train,
        num_shards=num_shards,
        shard=shard,
    )
    return torch.utils.data.DataLoader(
        split,
        batch_sampler=sampler,
        collate_fn=PairCollator(split, pad_token_id, pad_to_multiple_of),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
