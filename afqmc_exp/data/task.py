"""The ``data`` config group: a sentence-pair task, checked, tokenized and batched.

One dataclass, :class:`PairData`, serves every task. The options in ``conf/data/`` (afqmc, cmnli, ocnli, lcqmc,
bq, pawsx, chip_sts, and ``pairs`` for a user's own files) differ only in their values: the files' names, how
they are read (``format``, ``fields``), the labels in class-id order, the labels to drop, and the task's
official ``metric``.

A run uses it in three steps (``training.run``):

1. :meth:`PairData.check`, before any model loads or MLflow run opens: the files are found (or fetched from
   the task's official archive, ``download``) and every line of every file is checked, or found checked
   before under the same bytes (``token_cache.checked_stats``), so a bad line costs seconds, not a run.
2. :meth:`PairData.tokenize`, with the model's tokenizer: each file's tokens from the cache (built on first
   use), then the folds and limits, as :class:`~afqmc_exp.data.split.Split` views of them.
3. :meth:`PairData.loader`: batches of a split (``batching``).

``extra_dev`` names more labelled files, each scored at every evaluation beside ``dev`` (logged as
``dev_<name>/<metric>``; the best weights are still chosen on ``dev``), each with its own format and fields
where they differ (the CLUE diagnostics set names its columns ``premise``/``hypothesis``/``index``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..cache import file_digest
from ..metrics import Score
from .batching import auto_eval_batch_size, auto_pad_to_multiple_of, make_loader
from .download import archive_for, fetch_into, foreign_files, missing_message, not_unpacked_beside, other_task_message
from .formats import FIELDS, DataError, FileStats, Format, PairReader, ReadSpec, dropped_text, fields_tuple
from .split import Source, Split
from .token_cache import checked_stats, tokenized_file, tokenizer_digest

log = logging.getLogger(__name__)

AFQMC_FIELDS = {"text_a": "sentence1", "text_b": "sentence2", "label": "label", "id": "id"}


@dataclass
class CheckedFile:
    """A file of the task, found and checked (see ``PairData.check``)."""

    path: Path
    digest: str
    stats: FileStats
    spec: ReadSpec
    require_labels: bool


@dataclass
class PairData:
    """The ``data`` config group: which files, how to read them, which labels, how to batch them.

    ``train_file``/``dev_file``/``test_file`` are names inside ``dir`` (or absolute paths); ``test_file`` may
    be unlabelled (then it is only predicted, not scored) or null.
    """

    dir: str
    name: str = "afqmc"  # the task's name: run names, MLflow datasets, the archive to download
    format: Format = "jsonl"
    fields: dict = field(default_factory=lambda: dict(AFQMC_FIELDS))  # text_a, text_b, label, id -> column
    labels: list = field(default_factory=lambda: ["0", "1"])  # the file's label values, in class-id order
    drop_labels: list = field(default_factory=list)  # lines with these labels are skipped (CMNLI's "-")
    drop_blank: bool = False  # lines with a blank sentence are skipped and counted (PAWS-X's machine translations)
    metric: Score = "accuracy"  # the task's official metric (binary tasks: f1, auc too): trainer.metric's default
    train_file: str = "train.json"
    dev_file: str = "dev.json"
    test_file: str | None = "test.json"
    extra_dev: dict | None = None  # name -> {file, format?, fields?}: scored beside dev
    max_length: int = 128
    batch_size: int = 16  # the global batch: N processes share each batch, so 1 or N train alike
    eval_batch_size: int | Literal["auto"] = "auto"  # auto: 32 on CPU, 256 on a GPU
    pad_to_multiple_of: int | Literal["auto"] = "auto"  # batch width rounded up; auto: 8 on a GPU, 1 on CPU
    num_workers: int = 0
    group_batches: int = 50  # batches per length-sorted chunk of the shuffled epoch; 1 = plain shuffling
    train_limit: int | None = None  # use only the first N training pairs (debugging)
    dev_limit: int | None = None  # use only the first N dev pairs (debugging)
    test_limit: int | None = None  # score or predict only the first N test pairs (debugging)
    download: bool = True  # fetch the task's official archive when dir lacks the files
    archive_url: str | None = None  # another address for that archive (a mirror); null: the official one
    folds: int | None = None  # k-fold: train on the other folds of train+dev, evaluate on fold `fold`
    fold: int = 0
    fold_seed: int = 0  # which pairs go to which fold (stratified by label): fixed while the run's seed varies
    score_test: bool = True  # at the end: metrics on a labelled test file, predictions for an unlabelled one

    def __post_init__(self) -> None:  # YAML may give labels as numbers ([0, 1]): they are the file's text
        self.labels = [str(label) for label in self.labels]
        self.drop_labels = [str(label) for label in self.drop_labels]
        self.fields = {role: self.fields.get(role) for role in FIELDS}
        self.extra_dev = self.extra_dev or {}

    # ------------------------------------------------------------------------------------ files
    def path(self, name: str) -> Path:
        return Path(self.dir).expanduser() / name

    @property
    def spec(self) -> ReadSpec:
        return ReadSpec(self.format, fields_tuple(self.fields), tuple(self.labels), tuple(self.drop_labels),
                        self.drop_blank)  # fmt: skip

    def extra_spec(self, entry: dict) -> ReadSpec:
        fields = {**self.fields, **entry.get("fields", {})}
        return replace(self.spec, format=entry.get("format", self.format), fields=fields_tuple(fields))

    def wanted(self) -> dict[str, tuple[str, ReadSpec]]:
        """split -> (file name, how it is read): train, dev, test (when scored) and the extra dev sets."""
        files = {"train": (self.train_file, self.spec), "dev": (self.dev_file, self.spec)}
        if self.test_file and self.score_test:  # not read (nor checked) when it would not be used
            files["test"] = (self.test_file, self.spec)
        for name, entry in self.extra_dev.items():
            files[f"dev_{name}"] = (entry["file"], self.extra_spec(entry))
        return files

    def check(self) -> dict[str, CheckedFile]:
        """Every file found (or fetched) and checked; see the module docstring."""
        folder = Path(self.dir).expanduser()
        if folder.is_file():
            raise DataError(f"data.dir={self.dir}: is a file; data.dir is the folder that holds the task's files "
                            f"(e.g. data.dir={Path(self.dir).parent})")  # fmt: skip
        wanted = self.wanted()
        for split, (name, _) in wanted.items():
            if self.path(name).is_dir():
                raise DataError(f"{self.path(name)}: is a folder; {file_key(split)}={name} must name a file (inside "
                                "data.dir, or an absolute path)")  # fmt: skip
        missing = [name for name, _ in wanted.values() if not self.path(name).exists()]
        if missing:
            self._fetch(folder, missing)
        checked = {}
        for split, (name, spec) in wanted.items():
            path, labelled = self.path(name), split != "test"
            checked[split] = CheckedFile(path, file_digest(path), None, spec, labelled)
            checked[split].stats = checked_stats(path, spec, labelled, checked[split].digest)
        return checked

    def _fetch(self, folder: Path, missing: list[str]) -> None:
        """The missing files from the task's official archive, where that is safe (see ``download``), or one line
        saying why not and what to do."""
        another_task = other_task_message(self.name, folder, missing)
        if another_task:
            raise DataError(another_task)
        archive = archive_for(self.name, missing[0])
        if not self.download or any(Path(name).is_absolute() for name in missing):
            raise DataError(missing_message(self.name, folder, missing, "data.download is false", archive))
        others = foreign_files(folder)
        if others and archive is not None:
            optional = ["data.test_file"] if self.test_file in missing else []
            raise DataError(not_unpacked_beside(self.name, folder, missing, others, optional))
        fetch_into(self.name, folder, missing, self.archive_url)

    def summary(self, checked: dict[str, CheckedFile]) -> list[str]:
        """One line per checked file: ``train.json: 3316 pairs (0: 2290, 1: 1026)``, with any dropped lines and, where
        a limit applies, how many are used (a k-fold split is said by the folds)."""
        limits = {} if self.folds else self.limits()
        return [f"{split}: {file.path}: {describe(file.stats, self.labels)}"
                + (f"; the first {min(limits[split], file.stats.pairs)} used (data.{split}_limit)" if split in limits
                   else "") for split, file in checked.items()]  # fmt: skip

    # ------------------------------------------------------------------------------------ tokens and splits
    def tokenize(self, tokenizer, checked: dict[str, CheckedFile]) -> dict[str, Split]:
        """The checked files as tokenized splits (from the cache), then the folds and limits."""
        splits, tokenizer_sha = {}, tokenizer_digest(tokenizer)
        for split, file in checked.items():
            tokens = tokenized_file(file.path, file.spec, tokenizer, self.max_length, file.require_labels,
                                    file.digest, tokenizer_sha)  # fmt: skip
            read_again = lambda f=file: PairReader(f.path, f.spec, f.require_labels)  # noqa: E731
            splits[split] = Split([Source(tokens, read_again)])
        if self.folds:
            splits["train"], splits["dev"] = self.fold_split(splits["train"], splits["dev"])
        for split, limit in self.limits().items():
            if split in splits:
                splits[split] = splits[split].select(np.arange(min(limit, len(splits[split]))))
        return splits

    def limits(self) -> dict[str, int]:
        """split -> the number of its first pairs used, where ``data.<split>_limit`` is set."""
        given = {"train": self.train_limit, "dev": self.dev_limit, "test": self.test_limit}
        return {split: limit for split, limit in given.items() if limit is not None}

    def load(self, tokenizer) -> dict[str, Split]:
        """``check`` then ``tokenize``: the splits of a run (for notebooks and tests)."""
        return self.tokenize(tokenizer, self.check())

    def fold_split(self, train: Split, dev: Split) -> tuple[Split, Split]:
        """Train and dev pooled (pairs named ``train:<id>``/``dev:<id>``), dealt into ``folds`` folds per label
        in a seeded order; fold ``fold`` is evaluated on, the others trained on. Over ``fold=0..folds-1`` every
        pair is evaluated on exactly once (its out-of-fold prediction)."""
        prefixed = [replace(s, id_prefix=f"{name}:") for name, split in (("train", train), ("dev", dev))
                    for s in split.sources]  # fmt: skip
        pool = Split(prefixed)
        labels = pool.labels
        generator = torch.Generator().manual_seed(self.fold_seed)
        fold_of, offset = np.empty(len(pool), dtype=np.int64), 0
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            order = members[torch.randperm(len(members), generator=generator).numpy()]
            fold_of[order] = (offset + np.arange(len(order))) % self.folds  # the deal goes on where it stopped
            offset += len(order)
        held_out = fold_of == self.fold
        return pool.select(np.flatnonzero(~held_out)), pool.select(np.flatnonzero(held_out))

    # ------------------------------------------------------------------------------------ batches
    def for_device(self, device_type: str) -> PairData:
        """A copy with the ``auto`` settings decided for ``device_type`` (see ``batching``)."""
        eval_batch_size, multiple = self.eval_batch_size, self.pad_to_multiple_of
        return replace(
            self,
            eval_batch_size=auto_eval_batch_size(device_type) if eval_batch_size == "auto" else eval_batch_size,
            pad_to_multiple_of=auto_pad_to_multiple_of(device_type) if multiple == "auto" else multiple,
        )

    def loader(self, split: Split, pad_token_id: int, train: bool, seed: int = 0, pin_memory: bool = False,
               num_shards: int = 1, shard: int = 0) -> torch.utils.data.DataLoader:  # fmt: skip
        return make_loader(
            split, pad_token_id, self.batch_size if train else self.eval_batch_size, train=train, seed=seed,
            group_batches=self.group_batches, num_workers=self.num_workers, pin_memory=pin_memory,
            num_shards=num_shards, shard=shard, pad_to_multiple_of=self.pad_to_multiple_of,
        )  # fmt: skip


def file_key(split: str) -> str:
    """The config key that names a split's file: ``data.dev_file``, ``data.extra_dev.<name>.file``."""
    if split.startswith("dev_"):
        return f"data.extra_dev.{split.removeprefix('dev_')}.file"
    return f"data.{split}_file"


def describe(stats: FileStats, labels: list[str]) -> str:
    """``3316 pairs (0: 2290, 1: 1026)``, with the dropped lines if any."""
    text = f"{stats.pairs} pairs"
    if stats.labelled:
        text += " (" + ", ".join(f"{name}: {n}" for name, n in zip(labels, stats.label_counts, strict=True)) + ")"
    else:
        text += ", unlabelled"
    if stats.dropped or stats.blank:
        text += "; dropped " + dropped_text(stats)
    return text
