"""A split (train, dev, test, an extra dev set): rows of one or more tokenized files, gathered by index.

A split holds no pair as a Python object. It is a list of :class:`Source` files (their :class:`TokenArrays`,
and a way to read their pairs again) and, when it uses only some of their rows, which ones: the first N
(``data.train_limit``), or one fold of train and dev pooled (``data.folds``). Rows are kept in file order,
so predictions are written by reading the files again alongside the probabilities (:meth:`Split.pairs`):
texts and ids are needed once, at the end, never held in memory for a whole file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .formats import Pair
from .token_cache import TokenArrays


@dataclass
class Source:
    """One tokenized file of a split, and its pairs again, in order (for the prediction files)."""

    tokens: TokenArrays
    read_again: Callable[[], Iterable[Pair]]
    id_prefix: str = ""  # k-fold pools train and dev: their pairs are named train:<i> and dev:<i>


class Split:
    """Rows ``rows`` (sorted global row numbers; None: all) of ``sources`` laid end to end."""

    def __init__(self, sources: list[Source], rows: np.ndarray | None = None):
        self.sources, self.rows = sources, rows
        sizes = [len(s.tokens) for s in sources]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @classmethod
    def of_pairs(cls, pairs: list[Pair], tokens: TokenArrays) -> Split:
        """A split of pairs held in memory (a chunk of a file being predicted, tests)."""
        return cls([Source(tokens, lambda: pairs)])

    def __len__(self) -> int:
        return int(self.starts[-1]) if self.rows is None else len(self.rows)

    def __getitem__(self, index: int) -> int:
        return index  # the collate function gathers by index (see batching.PairCollator)

    def global_rows(self, index: np.ndarray | None = None) -> np.ndarray:
        rows = self.rows if self.rows is not None else np.arange(int(self.starts[-1]))
        return rows if index is None else rows[index]

    def _per_source(self, name: str) -> np.ndarray:
        whole = np.concatenate([np.asarray(getattr(s.tokens, name)) for s in self.sources])
        return whole if self.rows is None else whole[self.rows]

    @cached_property
    def lengths(self) -> np.ndarray:
        return self._per_source("lengths")

    @cached_property
    def labels(self) -> np.ndarray | None:
        """Class ids (int64), or None when the split is unlabelled."""
        labels = self._per_source("labels").astype(np.int64)
        return None if len(labels) and labels.min() < 0 else labels

    def gather(self, index: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Padded ids and token types of the split's rows ``index``."""
        rows = self.global_rows(index)
        if len(self.sources) == 1:
            return self.sources[0].tokens.gather(rows, width, pad_id)
        source = np.searchsorted(self.starts, rows, side="right") - 1
        ids, types = np.empty((len(rows), width), np.int64), np.empty((len(rows), width), np.int64)
        for k in np.unique(source):
            where = source == k
            ids[where], types[where] = self.sources[k].tokens.gather(rows[where] - self.starts[k], width, pad_id)
        return ids, types

    def unknown_share(self, unknown_id: int, special: int = 3, most: int = 2_000_000) -> float:
        """The share of the text's tokens that are ``unknown_id`` ([UNK]: text the tokenizer cannot read), over the
        first ``most`` tokens of each file; each pair's ``special`` tokens ([CLS], [SEP] twice) are not text."""
        unknown = text = 0
        for source in self.sources:
            ids = np.asarray(source.tokens.ids[:most])
            pairs = int(np.searchsorted(source.tokens.offsets, len(ids), side="right")) - 1
            unknown += int((ids == unknown_id).sum())
            text += len(ids) - special * max(pairs, 0)
        return unknown / text if text > 0 else 0.0

    def select(self, rows: np.ndarray) -> Split:
        """The split's rows ``rows`` (positions in this split, ascending)."""
        return Split(self.sources, self.global_rows(np.asarray(rows, dtype=np.int64)))

    def pairs(self) -> Iterator[Pair]:
        """The split's pairs, in its order, read again from their files (ids prefixed where pooled)."""
        wanted, position = self.global_rows(), 0
        for k, source in enumerate(self.sources):
            for row, pair in enumerate(source.read_again(), start=int(self.starts[k])):
                if position < len(wanted) and wanted[position] == row:
                    yield pair._replace(id=f"{source.id_prefix}{pair.id}") if source.id_prefix else pair
                    position += 1
