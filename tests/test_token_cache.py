"""The token cache: the same ids as calling the tokenizer; a key of exactly the parts that decide the ids (one test
per part); an entry complete or absent after a kill mid-write; one build shared by several processes."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import afqmc_exp.data.token_cache as token_cache
from afqmc_exp.cache import file_digest
from afqmc_exp.data import Pair, PairReader, ReadSpec, encode_pairs
from afqmc_exp.data.token_cache import cache_key, token_key, tokenized_file, tokenizer_digest
from afqmc_exp.model import packaged_minilm_path
from helpers import REPO, launch, run_command, tiny_pairs, tiny_pretrained


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_minilm_path())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def afqmc_file(tmp_path, n=100, name="train.json"):
    rows = [{"sentence1": f"how do i repay my loan number {i} " * (1 + i % 4), "sentence2": f"pay back {i}",
             "label": str(i % 2)} for i in range(n)]  # fmt: skip
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reference_ids(tokenizer, pairs, max_length):
    """What calling the tokenizer gives, pair by pair: the ids every path of the cache must give."""
    called = tokenizer([p.text_a for p in pairs], [p.text_b for p in pairs], truncation=True, max_length=max_length,
                       return_token_type_ids=True)  # fmt: skip
    return called["input_ids"], called["token_type_ids"]


def pair_ids(tokens):
    return [tokens.ids[a:b].tolist() for a, b in zip(tokens.offsets[:-1], tokens.offsets[1:], strict=True)]


def assert_as_called(tokens, tokenizer, pairs, max_length):
    """``tokens`` hold the ids, token types and labels that calling ``tokenizer`` on ``pairs`` gives."""
    ids, types = reference_ids(tokenizer, pairs, max_length)
    assert pair_ids(tokens) == ids and tokens.type_ids.tolist() == [t for row in types for t in row]
    assert tokens.labels.tolist() == [-1 if p.label is None else p.label for p in pairs] and tokens.offsets[0] == 0


@pytest.mark.parametrize("max_length", [12, 64])
def test_the_backend_gives_the_ids_the_tokenizer_gives(minilm_tokenizer, tmp_path, max_length):
    pairs = [Pair(p.text_a * 3, p.text_b, p.label) for p in tiny_pairs(40)] + [Pair("花呗怎么还款", "花呗如何还钱", 1)]
    before = json.dumps(minilm_tokenizer.backend_tokenizer.truncation)
    tokens = encode_pairs(pairs, minilm_tokenizer, max_length)
    assert json.dumps(minilm_tokenizer.backend_tokenizer.truncation) == before  # the caller's tokenizer untouched
    assert_as_called(tokens, minilm_tokenizer, pairs, max_length)
    assert tokens.ids.dtype == np.uint16


@pytest.mark.slow  # starts processes
def test_the_tokenizer_digest_ignores_truncation_state_and_is_stable_across_processes(minilm_tokenizer):
    """HF datasets' cache keys changed when a tokenizer had merely been called with truncation (datasets #3847,
    #5985, #6179): ours does not."""
    digest = tokenizer_digest(minilm_tokenizer)
    minilm_tokenizer(["a b c d e f"], ["g h"], truncation=True, max_length=5)
    assert tokenizer_digest(minilm_tokenizer) == digest
    code = (
        "from transformers import AutoTokenizer; from afqmc_exp.data.token_cache import tokenizer_digest; "
        f"print(tokenizer_digest(AutoTokenizer.from_pretrained({packaged_minilm_path()!r})))"
    )
    other = run_command([sys.executable, "-c", code])
    assert other.stdout.strip() == digest, other.stderr[-2000:]


def other_vocabulary(tmp_path):
    return tiny_pretrained(tmp_path / "other", seed=0).tokenizer


KEY_PARTS = {  # each changes one part of the key
    "file bytes": lambda key, tmp_path: {**key, "file_sha256": "0" * 64},
    "read format": lambda key, tmp_path: {**key, "read": ReadSpec(format="tsv", fields=(0, 1, 2, None)).describe()},
    "fields": lambda key, tmp_path: {**key, "read": ReadSpec(fields=("q1", "q2", "label", "id")).describe()},
    "labels": lambda key, tmp_path: {**key, "read": ReadSpec(labels=("1", "0")).describe()},
    "dropped labels": lambda key, tmp_path: {**key, "read": ReadSpec(drop_labels=("-",)).describe()},
    "blank lines dropped": lambda key, tmp_path: {**key, "read": ReadSpec(drop_blank=True).describe()},
    "tokenizer": lambda key, tmp_path: {**key, "tokenizer": tokenizer_digest(other_vocabulary(tmp_path))},
    "max_length": lambda key, tmp_path: {**key, "max_length": 64},
    "code version": lambda key, tmp_path: {**key, "code_version": key["code_version"] + 1},
}


@pytest.mark.parametrize("part", KEY_PARTS)
def test_each_part_of_the_key_changes_the_entry(part, minilm_tokenizer, tmp_path):
    key = token_key("a" * 64, ReadSpec(), tokenizer_digest(minilm_tokenizer), 128)
    assert cache_key(key) == cache_key(token_key("a" * 64, ReadSpec(), tokenizer_digest(minilm_tokenizer), 128))
    assert cache_key(KEY_PARTS[part](key, tmp_path)) != cache_key(key)
    assert set(key) == {"file_sha256", "read", "tokenizer", "max_length", "truncation", "code_version"}


def test_the_truncation_side_is_part_of_the_tokenizer(minilm_tokenizer):
    import copy

    left = copy.deepcopy(minilm_tokenizer)
    left.truncation_side = "left"
    assert tokenizer_digest(left) != tokenizer_digest(minilm_tokenizer)


def test_a_cached_file_is_mapped_not_tokenized_again_and_a_changed_one_is(minilm_tokenizer, tmp_path, cache,
                                                                           monkeypatch):  # fmt: skip
    path = afqmc_file(tmp_path)
    first = tokenized_file(path, ReadSpec(), minilm_tokenizer, 32, True)
    assert isinstance(first.ids, np.memmap) and len(first) == 100
    reference = encode_pairs(list(PairReader(path, ReadSpec())),
                             minilm_tokenizer, 32)  # fmt: skip
    for name in ("ids", "type_ids", "offsets", "labels"):
        np.testing.assert_array_equal(getattr(first, name), getattr(reference, name))

    def no_build(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(token_cache, "_build", no_build)
    again = tokenized_file(path, ReadSpec(), minilm_tokenizer, 32, True)
    np.testing.assert_array_equal(again.ids, first.ids)
    path.write_text(path.read_text().replace("number 7 ", "number seven "))
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenized_file(path, ReadSpec(), minilm_tokenizer, 32, True)


def build_command(path, max_length=32, *kill):
    return [sys.executable, str(REPO / "tests" / "helpers" / "cache_build.py"), path, packaged_minilm_path(),
            str(max_length), *map(str, kill)]  # fmt: skip


@pytest.mark.slow  # starts processes
def test_a_kill_while_the_cache_is_written_leaves_no_entry_and_the_next_run_builds_it(tmp_path, cache):
    path = afqmc_file(tmp_path)
    env = {**os.environ, "AFQMC_EXP_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    killed = run_command(build_command(path, 32, 2), env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    tokens_dir = cache / "tokens"
    assert not [p for p in tokens_dir.iterdir() if (p / "meta.json").exists()]  # nothing taken for complete
    assert [p.name for p in tokens_dir.iterdir() if p.name.endswith(".tmp")]  # the cut write is there
    rebuilt = run_command(build_command(path), env=env, timeout=300)
    assert rebuilt.returncode == 0 and "pairs=100" in rebuilt.stdout and "tokenized in" in rebuilt.stdout
    assert not [p for p in tokens_dir.iterdir() if p.name.endswith(".tmp")]  # the stale staging folder is gone


@pytest.mark.slow  # starts processes
def test_two_processes_share_one_build(tmp_path, cache):
    """Both start while the entry's lock is held (here by the test): one builds it, the other waits and maps it."""
    import subprocess

    from filelock import FileLock
    from transformers import AutoTokenizer

    path = afqmc_file(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    key = cache_key(token_key(file_digest(path), ReadSpec(), tokenizer_digest(tokenizer), 32))
    (cache / "tokens").mkdir(parents=True)
    env = {**os.environ, "AFQMC_EXP_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    with FileLock(cache / "tokens" / f"{key}.lock"):
        procs = [launch(build_command(path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(2)]  # fmt: skip
        outputs = []
        for proc in procs:  # each waits for the lock (it says so) before anything is written
            for line in proc.stdout:
                outputs.append(line)
                if "waiting for another process" in line:
                    break
    outputs += [proc.communicate(timeout=300)[0] for proc in procs]
    text = "".join(outputs)
    assert all(proc.returncode == 0 for proc in procs), text[-3000:]
    assert text.count("tokenized in") == 1 and text.count("pairs=100") == 2, text
    assert [p.name for p in (cache / "tokens").iterdir() if p.is_dir()] == [key]


# ------------------------------------------------------------------------------------ a damaged cache heals itself
def cut_to_zero(folder):
    (folder / "ids.bin").write_bytes(b"")


def flip_an_offset(folder):
    offsets = bytearray((folder / "offsets.bin").read_bytes())
    offsets[8] ^= 1  # the same size, another value: only the checksum tells
    (folder / "offsets.bin").write_bytes(bytes(offsets))


DAMAGES = {  # what a crash (before the data reached the disk) or a stray edit leaves in an entry
    "no meta.json": lambda folder: (folder / "meta.json").unlink(),
    "ids.bin cut to 0 bytes": cut_to_zero,
    "meta.json cut": lambda folder: (folder / "meta.json").write_text('{"pairs": 10'),
    "labels.bin missing": lambda folder: (folder / "labels.bin").unlink(),
    "an offset changed": flip_an_offset,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_entry_is_rebuilt_with_one_warning(minilm_tokenizer, tmp_path, cache, caplog, damage):
    path = afqmc_file(tmp_path)
    first = tokenized_file(path, ReadSpec(), minilm_tokenizer, 32, True)
    reference = {name: np.array(getattr(first, name)) for name in ("ids", "type_ids", "offsets", "labels")}
    (entry,) = [p for p in (cache / "tokens").iterdir() if p.is_dir()]
    del first
    DAMAGES[damage](entry)
    for _ in range(2):  # this run heals it; the next one maps the rebuilt entry
        caplog.clear()
        again = tokenized_file(path, ReadSpec(), minilm_tokenizer, 32, True)
        for name, array in reference.items():
            np.testing.assert_array_equal(getattr(again, name), array)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == []  # the second run: nothing to heal
    assert [p for p in (cache / "tokens").iterdir() if p.is_dir()] == [entry]


def test_a_damaged_entry_is_named_once_when_healed(minilm_tokenizer, tmp_path, cache, caplog):
    path = afqmc_file(tmp_path)
    tokenized_file(path, ReadSpec(), minilm_tokenizer, 32, True)
    (entry,) = [p for p in (cache / "tokens").iterdir() if p.is_dir()]
    cut_to_zero(entry)
    tokenized_file(path, ReadSpec(), minilm_tokenizer, 32, True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"{entry}: damaged (ids.bin holds 0 bytes" in warnings[0], warnings
    assert "rebuilt" in warnings[0]


def test_a_full_disk_while_the_cache_is_written_is_one_line(minilm_tokenizer, tmp_path, cache, monkeypatch):
    import errno

    from afqmc_exp.data import DataError

    def no_space(self, pairs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(token_cache._Encoder, "arrays", no_space)
    with pytest.raises(DataError, match=r"no space left on the device of the token cache .*AFQMC_EXP_CACHE") as full:
        tokenized_file(afqmc_file(tmp_path), ReadSpec(), minilm_tokenizer, 32, True)
    assert len(str(full.value).splitlines()) == 1
    assert not [p for p in (cache / "tokens").iterdir() if p.is_dir()]  # nothing half-written is left


def test_a_cache_that_cannot_be_written_falls_back_to_a_temporary_one(minilm_tokenizer, tmp_path, monkeypatch, caplog):
    """A file where the cache's folder should be (as a read-only cache refuses a write: an OSError at the first
    write): the run caches in a temporary folder, said once, and its children use it too."""
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "not-a-folder" / "cache"))
    tokens = tokenized_file(afqmc_file(tmp_path), ReadSpec(), minilm_tokenizer, 32, True)
    assert len(tokens) == 100
    fallback = os.environ["AFQMC_EXP_CACHE"]
    assert fallback != str(tmp_path / "not-a-folder" / "cache") and (Path(fallback) / "tokens").is_dir()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot be written" in warnings[0] and fallback in warnings[0], warnings


@pytest.mark.slow  # starts processes
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user (nobody)")
def test_a_read_only_cache_falls_back_for_a_user_who_cannot_write_it():
    """A cache folder another user owns, read-only to this one (a shared cache): the run goes on. The child loads
    what it needs as root (root's Python is not nobody's to read), then becomes nobody and tokenizes."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="afqmc-readonly-"))  # outside root's 0700 pytest folder
    try:
        shared.chmod(0o755)
        (shared / "cache").mkdir(mode=0o755)
        path = afqmc_file(shared)
        path.chmod(0o644)
        code = (
            "import os, logging, pathlib, filelock, tempfile; logging.basicConfig(level=logging.WARNING); "
            "from transformers import AutoTokenizer; from afqmc_exp.data import ReadSpec; "
            "from afqmc_exp.data.token_cache import tokenized_file; "
            f"tokenizer = AutoTokenizer.from_pretrained({packaged_minilm_path()!r}); "
            "os.setgid(65534); os.setuid(65534); "
            f"t = tokenized_file(pathlib.Path({str(path)!r}), ReadSpec(), tokenizer, 32, True); print('pairs', len(t))"
        )
        env = {**os.environ, "AFQMC_EXP_CACHE": str(shared / "cache"), "PYTHONPATH": str(REPO)}
        done = run_command([sys.executable, "-c", code], env=env, timeout=300)
        assert done.returncode == 0 and "pairs 100" in done.stdout, done.stderr[-2000:]
        assert "cannot be written (Permission denied)" in done.stderr and os.listdir(shared / "cache") == []
    finally:
        shutil.rmtree(shared)


def test_a_file_of_several_chunks_is_cached_and_encoded_as_one(minilm_tokenizer, tmp_path, cache, monkeypatch):
    """Chunks are tokenized one after another: each chunk's offsets continue from the last one's."""
    monkeypatch.setattr(token_cache, "CHUNK_PAIRS", 7)
    path = afqmc_file(tmp_path, n=30)
    pairs = list(PairReader(path, ReadSpec()))
    assert_as_called(tokenized_file(path, ReadSpec(), minilm_tokenizer, 16, True), minilm_tokenizer, pairs, 16)
    assert_as_called(encode_pairs(pairs, minilm_tokenizer, 16), minilm_tokenizer, pairs, 16)


def test_left_truncation_is_the_tokenizers_own(minilm_tokenizer):
    import copy

    left = copy.deepcopy(minilm_tokenizer)
    left.truncation_side = "left"
    pairs = [Pair("how do i repay my loan " * 4, "pay back " * 3, 1)]
    ids, _ = reference_ids(left, pairs, 12)
    assert pair_ids(encode_pairs(pairs, left, 12)) == ids != reference_ids(minilm_tokenizer, pairs, 12)[0]


class WithoutBackend:
    """A tokenizer without a fast backend (a Python one), as the cache sees it: called, measured, its vocabulary."""

    is_fast = False

    def __init__(self, tokenizer):
        self.tokenizer, self.truncation_side = tokenizer, tokenizer.truncation_side
        self.special_tokens_map = tokenizer.special_tokens_map

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __len__(self):
        return len(self.tokenizer)

    def get_vocab(self):
        return self.tokenizer.get_vocab()


def test_a_tokenizer_without_a_fast_backend_is_called_and_keyed_by_its_vocabulary(minilm_tokenizer, tmp_path):
    pairs = [Pair(p.text_a * 3, p.text_b, p.label) for p in tiny_pairs(12)]
    assert_as_called(encode_pairs(pairs, WithoutBackend(minilm_tokenizer), 10), minilm_tokenizer, pairs, 10)
    digest = tokenizer_digest(WithoutBackend(minilm_tokenizer))
    assert digest == tokenizer_digest(WithoutBackend(minilm_tokenizer)) != tokenizer_digest(minilm_tokenizer)
    assert tokenizer_digest(WithoutBackend(other_vocabulary(tmp_path))) != digest
    other_specials = WithoutBackend(minilm_tokenizer)
    other_specials.special_tokens_map = {**other_specials.special_tokens_map, "cls_token": "[SEP]"}
    assert tokenizer_digest(other_specials) != digest


def test_the_digest_leaves_out_truncation_and_padding_and_keeps_the_normaliser(minilm_tokenizer):
    import copy

    from tokenizers import normalizers

    digest = tokenizer_digest(minilm_tokenizer)
    stateful = copy.deepcopy(minilm_tokenizer)
    stateful.backend_tokenizer.enable_truncation(5)
    stateful.backend_tokenizer.enable_padding(length=9)
    assert tokenizer_digest(stateful) == digest  # HF datasets' keys changed here (datasets #3847, #5985, #6179)
    cased = copy.deepcopy(minilm_tokenizer)
    cased.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)  # same vocabulary, other ids
    assert tokenizer_digest(cased) != digest


def test_a_vocabulary_over_65536_tokens_keeps_its_ids_in_32_bits():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 70_000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokens = encode_pairs([Pair("w69999 w3", "w65536", 0)], tokenizer, 8)
    assert tokens.ids.dtype == np.int32 and tokens.ids.tolist() == [69999, 3, 65536]


@pytest.mark.parametrize("changed", ["max_length", "tokenizer"])
def test_another_length_or_tokenizer_gets_its_own_entry(changed, minilm_tokenizer, tmp_path, cache):
    path = afqmc_file(tmp_path, n=20)
    pairs = list(PairReader(path, ReadSpec()))
    tokenized_file(path, ReadSpec(), minilm_tokenizer, 12, True)
    tokenizer, max_length = (minilm_tokenizer, 40) if changed == "max_length" else (other_vocabulary(tmp_path), 12)
    again = tokenized_file(path, ReadSpec(), tokenizer, max_length, True)
    assert pair_ids(again) == reference_ids(tokenizer, pairs, max_length)[0]
    assert len(list((cache / "tokens").iterdir())) == 4  # two entries, each with its lock file


def test_a_staging_folder_left_by_a_killed_builder_is_removed_by_the_next(minilm_tokenizer, tmp_path, cache):
    import shutil

    path = afqmc_file(tmp_path, n=10)
    tokenized_file(path, ReadSpec(), minilm_tokenizer, 12, True)
    (entry,) = [p for p in (cache / "tokens").iterdir() if p.is_dir()]
    shutil.rmtree(entry)  # killed mid-write: no entry, and the builder's staging folder
    stale = cache / "tokens" / f".{entry.name}.999999.tmp"
    stale.mkdir()
    (stale / "ids.bin").write_bytes(b"\0" * 10)
    tokenized_file(path, ReadSpec(), minilm_tokenizer, 12, True)
    assert entry.is_dir() and not stale.exists()


def test_an_unlabelled_training_file_is_refused_by_the_cache(minilm_tokenizer, tmp_path, cache):
    from afqmc_exp.data import DataError

    path = tmp_path / "train.json"
    path.write_text(json.dumps({"sentence1": "a", "sentence2": "b"}) + "\n")
    with pytest.raises(DataError, match="label"):
        tokenized_file(path, ReadSpec(), minilm_tokenizer, 12, True)
    assert len(tokenized_file(path, ReadSpec(), minilm_tokenizer, 12, False)) == 1  # a test file needs none
