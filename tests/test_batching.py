"""Batching: length-grouped, seeded, sharded training batches; length-sorted evaluation batches; the collator
gathers each pair's own ids from the flat token arrays, padded and masked."""

import random
from collections import Counter

import numpy as np
import pytest

from afqmc_exp.data import LengthGroupedBatchSampler, PairCollator, PairData
from helpers import token_split


def listed(batches) -> list[list[int]]:
    return [list(map(int, b)) for b in batches]


def test_grouped_sampler_visits_every_pair_once_per_epoch_in_a_seeded_order():
    lengths = [(i * 37) % 61 + 5 for i in range(1000)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert Counter(i for b in batches for i in b) == Counter(range(1000))
        assert len(batches) == len(sampler) == 63
        epochs.append(batches)
    assert epochs[0] != epochs[1] != epochs[2]
    again = LengthGroupedBatchSampler(lengths, batch_size=16, seed=3)
    again.set_epoch(1)
    assert list(again) == epochs[1]
    other_seed = LengthGroupedBatchSampler(lengths, batch_size=16, seed=4)
    assert list(other_seed) != epochs[0]


def test_batches_are_grouped_by_length_within_chunks_with_the_short_batch_last():
    """What grouping buys and keeps: batches of pairs of near lengths (little padding), drawn from chunks of
    ``group_batches`` batches of the shuffled epoch (so they still mix), full batches first, the short one last,
    and ``group_batches=1`` as plain shuffling."""
    lengths = np.array([random.Random(i).randint(3, 60) for i in range(997)])

    def padding(sampler):  # the padded share of the epoch's tokens
        batches = listed(sampler.batches())
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches) / lengths.sum(), batches

    grouped_padding, batches = padding(LengthGroupedBatchSampler(lengths.tolist(), batch_size=16, seed=5,
                                                                 group_batches=7))  # fmt: skip
    shuffled_padding, plain = padding(LengthGroupedBatchSampler(lengths.tolist(), batch_size=16, seed=5,
                                                                group_batches=1))  # fmt: skip
    assert grouped_padding < shuffled_padding / 5
    assert [len(b) for b in batches] == [16] * 62 + [5] and [len(b) for b in plain] == [16] * 62 + [5]

    def median_span(of):  # how far apart the lengths of a batch's pairs are
        return np.median([lengths[b].max() - lengths[b].min() for b in of[:-1]])

    assert median_span(batches) < median_span(plain) / 4  # neighbours by length within a chunk (about 8 against 50)
    first_lengths = [int(lengths[b].min()) for b in batches[:10]]
    assert first_lengths != sorted(first_lengths)  # the chunks' batches are shuffled, not one long sort


def test_skip_next_drops_the_first_batches_of_one_iteration_only():
    sampler = LengthGroupedBatchSampler(list(range(100)), batch_size=10, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip_next(3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full


@pytest.mark.parametrize("n,batch_size,processes", [(203, 16, 2), (97, 8, 2), (96, 8, 2), (50, 7, 3), (5, 4, 4)])
def test_processes_share_every_global_batch_and_see_each_pair_once(n, batch_size, processes):
    lengths = [(i * 37) % 61 + 5 for i in range(n)]
    shards = [
        LengthGroupedBatchSampler(lengths, batch_size, seed=1, num_shards=processes, shard=rank)
        for rank in range(processes)
    ]
    for sampler in shards:
        sampler.set_epoch(4)
    global_batches = listed(shards[0].batches())
    assert [len(b) for b in global_batches] == shards[0].batch_sizes()
    slices = [list(sampler) for sampler in shards]
    assert all(len(s) == len(global_batches) == len(sampler) for s, sampler in zip(slices, shards, strict=True))
    for position, batch in enumerate(global_batches):
        parts = [s[position] for s in slices]
        assert sum(parts, []) == batch and all(parts)  # the batch, split among processes, none left empty
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert sorted(i for batch in global_batches for i in batch) == list(range(n))
    single = LengthGroupedBatchSampler(lengths, batch_size, seed=1)
    single.set_epoch(4)
    alone = list(single)  # the same batches as one process, except a remainder too short to share...
    if len(alone[-1]) < processes:  # ...which is merged into the batch before it
        alone[-2:] = [alone[-2] + alone[-1]]
    assert global_batches == alone


def test_a_batch_smaller_than_the_process_count_is_refused():
    with pytest.raises(ValueError, match="data.batch_size>=4"):
        LengthGroupedBatchSampler([5] * 100, batch_size=2, seed=0, num_shards=4, shard=0)


def padding_share(batches, lengths):
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


def test_grouping_removes_most_padding_and_still_mixes_lengths_across_batches():
    lengths = [(i * 37) % 61 + 5 for i in range(2000)]
    grouped = list(LengthGroupedBatchSampler(lengths, 16, seed=0))
    plain = list(LengthGroupedBatchSampler(lengths, 16, seed=0, group_batches=1))
    assert padding_share(plain, lengths) > 0.3
    assert padding_share(grouped, lengths) < 0.05
    first_lengths = [lengths[b[0]] for b in grouped[:20]]
    assert first_lengths != sorted(first_lengths)  # batch order is shuffled, not short-to-long


def test_evaluation_order_sorts_by_length_and_covers_everything():
    lengths = [3, 9, 1, 7, 5]
    batches = list(LengthGroupedBatchSampler(lengths, batch_size=2, seed=0, shuffle=False))
    assert batches == [[1, 3], [4, 0], [2]]


def test_collate_pads_to_the_longest_pair_with_masks_and_labels():
    split = token_split([[2, 5, 5, 3, 7, 3], [2, 5, 5, 5, 5, 3, 7, 3]], [[0, 0, 0, 0, 1, 1], [0] * 6 + [1, 1]], [1, 0])
    batch = PairCollator(split, pad_token_id=0)([0, 1])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[1] * 6 + [0, 0], [1] * 8]
    assert batch["input_ids"][0, 6:].tolist() == [0, 0]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["index"].tolist() == [0, 1]


@pytest.mark.parametrize("multiple", [1, 8])
def test_batches_gathered_from_the_flat_arrays_are_each_pair_padded(multiple):
    """Every batch holds each pair's own ids and token types, then padding (pad id, type 0, mask 0) up to the
    longest pair rounded up to ``multiple``."""
    rng = random.Random(multiple)
    ids = [[2] + [rng.randint(5, 99) for _ in range(rng.randint(1, 20))] + [3] for _ in range(50)]
    types = [[0] * (len(x) // 2) + [1] * (len(x) - len(x) // 2) for x in ids]
    collate = PairCollator(token_split(ids, types), pad_token_id=7, pad_to_multiple_of=multiple)
    for indices in [rng.sample(range(50), 16) for _ in range(20)] + [[ids.index(max(ids, key=len))]]:
        batch = collate(indices)
        width = -(-max(len(ids[i]) for i in indices) // multiple) * multiple
        assert batch["input_ids"].shape == (len(indices), width)
        for row, i in enumerate(indices):
            pad = width - len(ids[i])
            assert batch["input_ids"][row].tolist() == ids[i] + [7] * pad
            assert batch["token_type_ids"][row].tolist() == types[i] + [0] * pad
            assert batch["attention_mask"][row].tolist() == [1] * len(ids[i]) + [0] * pad
        assert batch["labels"].tolist() == [i % 2 for i in indices] and batch["index"].tolist() == indices


def test_a_split_of_several_files_and_a_selection_gathers_the_right_rows():
    """k-fold pools train and dev: a split over two sources, some rows selected, still gathers each pair."""
    from afqmc_exp.data import Split

    first, second = token_split([[2, 10 + i, 3] for i in range(5)]), token_split([[2, 20 + i, 21, 3] for i in range(4)])
    pooled = Split(first.sources + second.sources).select(np.array([1, 4, 5, 8]))
    ids, _ = pooled.gather(np.arange(4), 4, 0)
    assert ids.tolist() == [[2, 11, 3, 0], [2, 14, 3, 0], [2, 20, 21, 3], [2, 23, 21, 3]]
    assert pooled.lengths.tolist() == [3, 3, 4, 4] and [p.id for p in pooled.pairs()] == [1, 4, 0, 3]


def test_auto_batch_settings_are_decided_by_the_device(tmp_path):
    data = PairData(dir=str(tmp_path))
    assert (data.eval_batch_size, data.pad_to_multiple_of) == ("auto", "auto")
    cpu, gpu = data.for_device("cpu"), data.for_device("cuda")
    assert (cpu.eval_batch_size, cpu.pad_to_multiple_of) == (32, 1)
    assert (gpu.eval_batch_size, gpu.pad_to_multiple_of) == (256, 8)
    chosen = PairData(dir=str(tmp_path), eval_batch_size=64, pad_to_multiple_of=16).for_device("cuda")
    assert (chosen.eval_batch_size, chosen.pad_to_multiple_of) == (64, 16)


@pytest.mark.parametrize("cls_only", [False, True])
def test_widths_rounded_up_to_a_multiple_give_the_same_logits(tmp_path, cls_only):
    """data.pad_to_multiple_of (8 on a GPU) only adds masked padding: every pair's logits stay the same."""
    import torch

    from afqmc_exp.data import Split, encode_pairs
    from afqmc_exp.model import enable_cls_only_last_layer
    from helpers import tiny_pairs, tiny_pretrained

    pretrained = tiny_pretrained(tmp_path, dropout=0.0)
    if cls_only:
        enable_cls_only_last_layer(pretrained.model)
    pretrained.model.eval()
    pairs = tiny_pairs(24, seed=4)
    split = Split.of_pairs(pairs, encode_pairs(pairs, pretrained.tokenizer, 32))
    logits = {}
    for multiple in (1, 8, 16):
        batch = PairCollator(split, pretrained.tokenizer.pad_token_id, multiple)(list(range(24)))
        assert batch["input_ids"].shape[1] % multiple == 0
        inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        with torch.no_grad():
            logits[multiple] = pretrained.model(**inputs).logits
    assert logits[16].shape == logits[1].shape
    for multiple in (8, 16):
        torch.testing.assert_close(logits[multiple], logits[1], atol=1e-5, rtol=1e-5)
