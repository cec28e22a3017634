"""Batches of a split: length-grouped random batches for training, length-sorted ones for evaluation, each
padded only to its own longest pair.

Why it looks like this:

* Batches are padded only to their own longest pair (dynamic padding), and the training order groups pairs
  of similar length ("length-grouped batching"): the epoch's random permutation is cut into chunks of
  ``group_batches`` batches, each chunk is sorted by length and split into batches, and the batch order is
  shuffled again. Every pair is still seen exactly once per epoch in a random batch, but a batch carries
  little padding instead of a large share (docs/performance.md has the figures). Evaluation
  sorts the whole split by length (order does not matter there) and maps the predictions back.
* The training order is a pure function of ``(seed, epoch)``, which makes runs reproducible and lets a
  resumed run skip exactly the batches it had already trained on. It is computed with whole-array
  operations (10 million pairs are ordered in seconds) and is the order a Python sort of each chunk gives.
* A batch is gathered from the split's flat token arrays in a few array operations (``TokenArrays.gather``):
  no Python loop over its pairs, whose cost is small beside a CPU step but not beside a GPU step of a few
  milliseconds, nor for evaluation's 256-pair batches.
* Two settings depend on the device, and ``auto`` picks them once it is known: on a GPU, batch widths are
  rounded up to a multiple of 8 (tensor cores work in tiles of 8, and fewer distinct shapes mean fewer
  kernel plans and compiled graphs) and evaluation batches are large (a GPU is far from full at 32 pairs);
  on a CPU padding is pure extra work and moderate evaluation batches stay in cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .split import Split


def auto_eval_batch_size(device_type: str) -> int:
    return 256 if device_type == "cuda" else 32


def auto_pad_to_multiple_of(device_type: str) -> int:
    return 8 if device_type == "cuda" else 1


class PairCollator:
    """Pads a list of a split's row indices to the batch's longest pair, rounded up to a multiple of
    ``pad_to_multiple_of`` (the padding is masked: the model's answer does not change)."""

    def __init__(self, split: Split, pad_token_id: int, pad_to_multiple_of: int = 1):
        self.split, self.pad, self.multiple = split, pad_token_id, pad_to_multiple_of
        self.lengths, labels = torch.from_numpy(split.lengths.astype(np.int64)), split.labels
        self.labels = torch.from_numpy(labels) if labels is not None else None

    def width(self, longest: int) -> int:
        return -(-longest // self.multiple) * self.multiple

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[index]
        width = self.width(int(lengths.max()))
        ids, types = self.split.gather(index.numpy(), width, self.pad)
        batch = {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(types),
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
        lengths: Sequence[int] | np.ndarray,
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
        self.lengths, self.batch_size, self.seed = np.asarray(lengths, dtype=np.int64), batch_size, seed
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

    def order(self, generator: torch.Generator) -> np.ndarray:
        """The epoch's pairs in batch order (before the batch order itself is shuffled by the same ``generator``)."""
        n = len(self.lengths)
        if not self.shuffle:  # evaluation: longest first, so a too-large batch fails at once, not at the end
            return np.argsort(-self.lengths, kind="stable")
        order = torch.randperm(n, generator=generator).numpy()
        if self.group_batches > 1:  # each chunk sorted by length, stably, in place: the chunks as rows of a table
            size = self.group_batches * self.batch_size
            whole, keys = n // size * size, self.lengths[order]
            within = np.argsort(keys[:whole].reshape(-1, size), axis=1, kind="stable")
            head = np.take_along_axis(order[:whole].reshape(-1, size), within, axis=1).ravel()
            order = np.concatenate([head, order[whole:][np.argsort(keys[whole:], kind="stable")]])
        return order

    def batches(self) -> list[np.ndarray]:
        """The epoch's global batches, in training order."""
        # seeded by the seed and the epoch alone: a resumed run draws the same batches
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = self.order(generator)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle and self.group_batches > 1:  # shuffle the full batches; the short remainder stays last
            full = len(batches) - (len(batches[-1]) < self.batch_size)
            batches = [batches[i] for i in torch.randperm(full, generator=generator).tolist()] + batches[full:]
        if len(batches) > len(self.batch_sizes()):  # a remainder too short to share joins the batch before it
            batches[-2:] = [np.concatenate(batches[-2:])]
        return batches

    def shard_of(self, batch: np.ndarray | list[int]) -> list[int]:
        """This process's contiguous slice of a global batch (sizes differ by at most one)."""
        size = len(batch)
        return np.asarray(batch)[
            self.shard * size // self.num_shards : (self.shard + 1) * size // self.num_shards
        ].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return (self.shard_of(batch) for batch in self.batches()[skip:])


def make_loader(
    split: Split,
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
