"""Reading, validating and batching AFQMC files."""

import json
from collections import Counter

import pytest
import torch

from afqmc_exp.data import (
    AfqmcData,
    DataError,
    EncodedPairs,
    LengthGroupedBatchSampler,
    PairCollator,
    PairExample,
    encode_pairs,
    read_pairs,
)

GOOD = '{"sentence1": "花呗怎么还款", "sentence2": "花呗如何还钱", "label": "1"}'


def write(tmp_path, content, name="train.json", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def test_accepts_the_official_format_and_its_variants(tmp_path):
    content = "\ufeff" + GOOD + "\r\n\r\n" + '{"sentence1": "a", "sentence2": "b", "label": 0}\r\n'
    rows = read_pairs(write(tmp_path, content))
    assert [(r.sentence1, r.label) for r in rows] == [("花呗怎么还款", 1), ("a", 0)]


def test_unlabelled_test_file_keeps_ids(tmp_path):
    path = write(
        tmp_path, '{"id": 7, "sentence1": "a", "sentence2": "b"}\n{"id": 9, "sentence1": "c", "sentence2": "d"}\n'
    )
    assert [r.id for r in read_pairs(path, require_labels=False)] == [7, 9]
    with pytest.raises(DataError, match=r"train.json:1: no label"):
        read_pairs(path)


BAD_FILES = [
    ("empty", "", r"train.json: the file is empty"),
    ("only blanks", "\n \r\n", r"train.json: the file is empty"),
    ("gbk", GOOD.encode("gbk"), r"train.json:1: bytes that are not UTF-8.*iconv -f GBK"),
    ("not json", GOOD + "\n{oops\n", r"train.json:2: not valid JSON"),
    ("array", "[" + GOOD + "]", r"train.json:1: the file is one JSON array; .*JSON lines"),
    ("json list line", GOOD + "\n[1, 2]\n", r"train.json:2: a JSON list"),
    ("missing sentence2", '{"sentence1": "a", "label": "0"}', r"train.json:1: sentence2 is missing"),
    ("null sentence1", '{"sentence1": null, "sentence2": "a", "label": "0"}', r"train.json:1: sentence1 is null"),
    ("empty sentence1", '{"sentence1": "  ", "sentence2": "a", "label": "0"}', r"train.json:1: sentence1 is \"  \""),
    ("label 2", GOOD + '\n{"sentence1": "a", "sentence2": "b", "label": "2"}', r"train.json:2: label is \"2\""),
    ("label true", '{"sentence1": "a", "sentence2": "b", "label": true}', r"train.json:1: label is true"),
    ("lone surrogate", '{"sentence1": "a\\ud800", "sentence2": "b", "label": "0"}',
     r"train.json:1: sentence1 holds an unpaired surrogate escape"),
]  # fmt: skip
UNLABELLED_FILES = [  # read as a test file (labels optional)
    ("duplicate ids", '{"id": 7, "sentence1": "a", "sentence2": "b"}\n{"id": 8, "sentence1": "c", "sentence2": "d"}\n'
     '{"id": 7, "sentence1": "e", "sentence2": "f"}', r"test.json:3: id 7 is also on line 1; ids must be unique"),
    ("labelled then not", '{"sentence1": "a", "sentence2": "b", "label": "1"}\n\n{"sentence1": "c", "sentence2": "d"}',
     r"test.json:3: line 1 has a label and line 3 has none"),
    ("not then labelled", '{"sentence1": "a", "sentence2": "b"}\n{"sentence1": "c", "sentence2": "d", "label": 0}',
     r"test.json:2: line 2 has a label and line 1 has none"),
]  # fmt: skip


@pytest.mark.parametrize("content,message", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_rejects_bad_files_with_file_line_and_fix(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        read_pairs(write(tmp_path, content))


@pytest.mark.parametrize("content,message", [b[1:] for b in UNLABELLED_FILES], ids=[b[0] for b in UNLABELLED_FILES])
def test_rejects_bad_test_files_with_file_line_and_fix(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        read_pairs(write(tmp_path, content, name="test.json"), require_labels=False)


def test_line_and_paragraph_separators_inside_a_sentence_are_text(tmp_path):
    """Raw U+2028 and U+0085 are valid inside JSON strings; only "\\n" ends a line."""
    rows = read_pairs(write(tmp_path, '{"sentence1": "a\u2028b", "sentence2": "c\u0085d", "label": "1"}\r\n' + GOOD))
    assert [(r.sentence1, r.sentence2) for r in rows] == [("a\u2028b", "c\u0085d"), ("花呗怎么还款", "花呗如何还钱")]


def test_data_dir_pointing_at_a_file_says_so(tmp_path):
    with pytest.raises(DataError, match=r"data.dir=.*train.json: is a file; data.dir is the folder"):
        AfqmcData(dir=str(write(tmp_path, GOOD))).load()


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="file not found.*data.dir"):
        read_pairs(tmp_path / "nope.json")


def test_missing_official_files_offline_fail_at_once_with_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"afqmc_public.zip.*unzip it into .*data.dir="):
        AfqmcData(dir=str(tmp_path / "afqmc")).load()


def test_official_zip_is_unpacked_from_the_cache_and_checked(tmp_path, monkeypatch):
    import hashlib
    import zipfile

    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "afqmc_public.zip", "w") as archive:
        for name in ("train.json", "dev.json"):
            archive.writestr(name, GOOD + "\n")
        archive.writestr("test.json", '{"id": 0, "sentence1": "a", "sentence2": "b"}\n')
    digest = hashlib.sha256((cache / "afqmc_public.zip").read_bytes()).hexdigest()
    (cache / "afqmc_public.zip.sha256").write_text(digest)
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(cache))
    splits = AfqmcData(dir=str(tmp_path / "afqmc")).load()
    assert {k: len(v) for k, v in splits.items()} == {"train": 1, "dev": 1, "test": 1}
    (cache / "afqmc_public.zip.sha256").write_text("0" * 64)
    (tmp_path / "afqmc" / "train.json").unlink()
    with pytest.raises(DataError, match="checksum differs"):
        AfqmcData(dir=str(tmp_path / "afqmc")).load()


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
    global_batches = shards[0].batches()
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


class FakeTokenizer:
    pad_token_id = 0

    def __call__(self, first, second, truncation, max_length, **_):
        ids = [[101] + [len(a)] * len(a) + [102] + [7] * len(b) + [102] for a, b in zip(first, second, strict=True)]
        types = [[0] * (len(a) + 2) + [1] * (len(b) + 1) for a, b in zip(first, second, strict=True)]
        return {"input_ids": [i[:max_length] for i in ids], "token_type_ids": [t[:max_length] for t in types]}


def test_collate_pads_to_the_longest_pair_with_masks_and_labels(tmp_path):
    rows = read_pairs(
        write(
            tmp_path,
            '{"sentence1": "ab", "sentence2": "c", "label": "1"}\n'
            '{"sentence1": "abcd", "sentence2": "efg", "label": 0}\n',
        )
    )
    split = encode_pairs(rows, FakeTokenizer(), max_length=8)
    assert split.lengths == [6, 8]
    batch = PairCollator(split, pad_token_id=0)([0, 1])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[1] * 6 + [0, 0], [1] * 8]
    assert batch["input_ids"][0, 6:].tolist() == [0, 0]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["index"].tolist() == [0, 1]


@pytest.mark.parametrize("multiple", [1, 8])
def test_batches_gathered_from_the_padded_table_are_each_pair_padded(multiple):
    """PairCollator pads the split once and gathers rows per batch: every batch holds each pair's own ids and
    token types, then padding (pad id, type 0, mask 0) up to the longest pair rounded up to ``multiple``."""
    import random

    random.seed(multiple)
    ids = [[2] + [random.randint(5, 99) for _ in range(random.randint(1, 20))] + [3] for _ in range(50)]
    types = [[0] * (len(x) // 2) + [1] * (len(x) - len(x) // 2) for x in ids]
    examples = [PairExample("a", "b", i % 2) for i in range(50)]
    split = EncodedPairs(examples, ids, types, torch.tensor([e.label for e in examples]))
    collate = PairCollator(split, pad_token_id=7, pad_to_multiple_of=multiple)
    for indices in [random.sample(range(50), 16) for _ in range(20)] + [[ids.index(max(ids, key=len))]]:
        batch = collate(indices)
        width = -(-max(len(ids[i]) for i in indices) // multiple) * multiple
        assert batch["input_ids"].shape == (len(indices), width)
        for row, i in enumerate(indices):
            pad = width - len(ids[i])
            assert batch["input_ids"][row].tolist() == ids[i] + [7] * pad
            assert batch["token_type_ids"][row].tolist() == types[i] + [0] * pad
            assert batch["attention_mask"][row].tolist() == [1] * len(ids[i]) + [0] * pad
        assert batch["labels"].tolist() == [i % 2 for i in indices] and batch["index"].tolist() == indices


def test_shipped_quickstart_sample_is_what_the_generator_writes(tmp_path):
    from afqmc_exp.resolvers import SAMPLE_DIR
    from afqmc_exp.sample import write_sample

    write_sample(tmp_path)
    for name in ("train.json", "dev.json", "test.json"):
        assert (SAMPLE_DIR / name).read_text(encoding="utf-8") == (tmp_path / name).read_text(encoding="utf-8")
    labels = [json.loads(line)["label"] for line in (SAMPLE_DIR / "train.json").read_text().splitlines()]
    assert 0.2 < labels.count("1") / len(labels) < 0.45


def test_limits_take_the_first_pairs_for_debugging(tmp_path):
    for name in ("train.json", "dev.json"):
        write(tmp_path, "".join(GOOD + "\n" for _ in range(10)), name=name)
    splits = AfqmcData(dir=str(tmp_path), test_file=None, train_limit=4, dev_limit=2).load()
    assert (len(splits["train"]), len(splits["dev"])) == (4, 2)


@pytest.mark.parametrize("main,extra", [("evaluate_main", []), ("predict_main", ["out=/tmp/never.json"])])
def test_evaluate_and_predict_check_their_input_the_same_way(tmp_path, main, extra):
    import afqmc_exp.commands as cli

    bad = write(tmp_path, GOOD + "\n" + '{"sentence1": "a", "sentence2": null}\n', name="pairs.json")
    with pytest.raises(SystemExit, match=r"error: .*pairs.json:2: sentence2 is null"):
        getattr(cli, main)([f"ckpt={tmp_path}", f"file={bad}", *extra])


# ------------------------------------------------------------------------------------ device-dependent batching
@pytest.mark.parametrize("cls_only", [False, True])
def test_widths_rounded_up_to_a_multiple_give_the_same_logits(tmp_path, cls_only):
    """data.pad_to_multiple_of (8 on a GPU) only adds masked padding: every pair's logits stay the same."""
    import torch

    from afqmc_exp.model import enable_cls_only_last_layer
    from helpers import tiny_pairs, tiny_pretrained

    pretrained = tiny_pretrained(tmp_path, dropout=0.0)
    if cls_only:
        enable_cls_only_last_layer(pretrained.model)
    pretrained.model.eval()
    split = encode_pairs(tiny_pairs(24, seed=4), pretrained.tokenizer, 32)
    indices = list(range(24))
    logits = {}
    for multiple in (1, 8, 16):
        batch = PairCollator(split, pretrained.tokenizer.pad_token_id, multiple)(indices)
        assert batch["input_ids"].shape[1] % multiple == 0
        inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        with torch.no_grad():
            logits[multiple] = pretrained.model(**inputs).logits
    assert logits[16].shape == logits[1].shape
    for multiple in (8, 16):
        torch.testing.assert_close(logits[multiple], logits[1], atol=1e-5, rtol=1e-5)


def test_auto_batch_settings_are_decided_by_the_device(tmp_path):
    data = AfqmcData(dir=str(tmp_path))
    assert (data.eval_batch_size, data.pad_to_multiple_of) == ("auto", "auto")
    cpu, gpu = data.for_device("cpu"), data.for_device("cuda")
    assert (cpu.eval_batch_size, cpu.pad_to_multiple_of) == (32, 1)
    assert (gpu.eval_batch_size, gpu.pad_to_multiple_of) == (256, 8)
    chosen = AfqmcData(dir=str(tmp_path), eval_batch_size=64, pad_to_multiple_of=16).for_device("cuda")
    assert (chosen.eval_batch_size, chosen.pad_to_multiple_of) == (64, 16)
