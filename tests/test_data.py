"""Reading and checking sentence-pair files in every format: good variants are read, bad lines are refused with
file:line and the fix, labels map to class ids in the task's order; and a model that cannot read the data is said."""

import json
import os
from dataclasses import replace

import pytest

from afqmc_exp.data import DataError, PairData, PairReader, ReadSpec, read_pairs

GOOD = '{"sentence1": "花呗怎么还款", "sentence2": "花呗如何还钱", "label": "1"}'
NLI = ReadSpec(labels=("entailment", "neutral", "contradiction"), drop_labels=("-",))
TSV = ReadSpec(format="tsv", fields=(0, 1, 2, None))


def write(tmp_path, content, name="train.json", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def test_accepts_the_official_format_and_its_variants(tmp_path):
    content = "\ufeff" + GOOD + "\r\n\r\n" + '{"sentence1": "a", "sentence2": "b", "label": 0}\r\n'
    rows = read_pairs(write(tmp_path, content))
    assert [(r.text_a, r.label) for r in rows] == [("花呗怎么还款", 1), ("a", 0)]


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
    ("only a BOM", "\ufeff", r"train.json: the file is empty"),
    ("only wide spaces", "\u3000\n\u00a0\u00a0\n", r"train.json: the file is empty"),
    ("only separators", "\x1c\n\x1d\x1e\x1f\n", r"train.json: the file is empty"),
    ("gbk", GOOD.encode("gbk"), r"train.json:1: bytes that are not UTF-8.*iconv -f GBK"),
    ("not json", GOOD + "\n{oops\n", r"train.json:2: not valid JSON"),
    ("array", "[" + GOOD + "]", r"train.json:1: the file is one JSON array, not JSON lines.*data.format=json_array"),
    ("csv", "q1,q2,answer\nhow do i pay,can i pay,same\n", r"train.json:1: a CSV line.*data.format=csv"),
    ("tsv", "0\thow do i pay\tcan i pay\t1\n", r"train.json:1: a TSV line.*data.format=tsv"),
    ("json list line", GOOD + "\n[1, 2]\n", r"train.json:2: a JSON list"),
    ("missing sentence2", '{"sentence1": "a", "label": "0"}', r"train.json:1: sentence2 \(text_b\) is missing"),
    ("null sentence1", '{"sentence1": null, "sentence2": "a", "label": "0"}',
     r"train.json:1: sentence1 \(text_a\) is null"),
    ("empty sentence1", '{"sentence1": "  ", "sentence2": "a", "label": "0"}',
     r'train.json:1: sentence1 \(text_a\) is "  "'),
    ("zero-width only", '{"sentence1": "\\u200b\\u200d", "sentence2": "a", "label": "0"}', r"train.json:1: sentence1 "),
    ("escaped NULs only", '{"sentence1": "\\u0000\\u0000", "sentence2": "a", "label": "0"}',
     r"train.json:1: sentence1 "),
    ("label 2", GOOD + '\n{"sentence1": "a", "sentence2": "b", "label": "2"}',
     r'train.json:2: label is "2"; the labels are "0", "1"'),
    ("label true", '{"sentence1": "a", "sentence2": "b", "label": true}', r"train.json:1: label is true"),
    ("label of 5001 digits", '{"sentence1": "a", "sentence2": "b", "label": 1' + "0" * 5000 + "}", r"train.json:1: "),
    ("label twice", '{"sentence1": "a", "sentence2": "b", "label": "0", "label": "1"}',
     r"train.json:1: the key 'label' appears twice"),
    ("nested deeply", '{"sentence1": ' + "[" * 100000 + "]" * 100000 + "}", r"train.json:1: "),
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
    with pytest.raises(DataError, match=message) as refused:
        read_pairs(write(tmp_path, content))
    assert len(str(refused.value).splitlines()) == 1


@pytest.mark.parametrize("content,message", [b[1:] for b in UNLABELLED_FILES], ids=[b[0] for b in UNLABELLED_FILES])
def test_rejects_bad_test_files_with_file_line_and_fix(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        read_pairs(write(tmp_path, content, name="test.json"), require_labels=False)


def test_line_and_paragraph_separators_inside_a_sentence_are_text(tmp_path):
    """Raw U+2028 and U+0085 are valid inside JSON strings; only "\\n", "\\r\\n" and "\\r" end a line."""
    rows = read_pairs(write(tmp_path, '{"sentence1": "a\u2028b", "sentence2": "c\u0085d", "label": "1"}\r\n' + GOOD))
    assert [(r.text_a, r.text_b) for r in rows] == [("a\u2028b", "c\u0085d"), ("花呗怎么还款", "花呗如何还钱")]


def test_old_mac_line_ends_are_lines(tmp_path):
    bad = write(tmp_path, GOOD + "\r" + GOOD + "\r" + '{"oops"\r', name="mac.json")
    with pytest.raises(DataError, match=r"mac.json:3: not valid JSON"):
        read_pairs(bad)
    assert len(read_pairs(write(tmp_path, GOOD + "\r" + GOOD + "\r"))) == 2


def test_a_named_pipe_is_refused_without_hanging(tmp_path):
    pipe = tmp_path / "train.json"
    os.mkfifo(pipe)
    with pytest.raises(DataError, match=r"train.json: not a regular file"):
        read_pairs(pipe)


def test_data_dir_pointing_at_a_file_says_so(tmp_path):
    with pytest.raises(DataError, match=r"data.dir=.*train.json: is a file; data.dir is the folder"):
        PairData(dir=str(write(tmp_path, GOOD))).check()


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="file not found.*data.dir"):
        read_pairs(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------ labels
def test_labels_map_to_class_ids_in_the_tasks_order_and_dropped_ones_are_counted(tmp_path):
    lines = [{"sentence1": "a", "sentence2": "b", "label": label} for label in
             ("neutral", "-", "contradiction", "entailment", "-", "neutral")]  # fmt: skip
    path = write(tmp_path, "".join(json.dumps(line) + "\n" for line in lines))
    reader = PairReader(path, NLI)
    assert [p.label for p in reader] == [1, 2, 0, 1]
    assert (reader.stats.pairs, reader.stats.label_counts, reader.stats.dropped) == (4, [1, 2, 1], {"-": 2})
    with pytest.raises(DataError, match=r'train.json:1: label is "maybe"; the labels are "entailment", "neutral", '
                       r'"contradiction" \(data.labels, data.drop_labels\)'):  # fmt: skip
        read_pairs(write(tmp_path, '{"sentence1": "a", "sentence2": "b", "label": "maybe"}\n'), NLI)


def test_a_file_of_only_dropped_lines_says_so(tmp_path):
    path = write(tmp_path, '{"sentence1": "a", "sentence2": "b", "label": "-"}\n' * 3)
    with pytest.raises(DataError, match=r"holds no pairs to use: every line was dropped \(3 labelled '-'"):
        read_pairs(path, NLI)


def test_integer_labels_are_their_digits(tmp_path):
    path = write(tmp_path, '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "a", "sentence2": "b", '
                 '"label": "0"}\n')  # fmt: skip
    assert [p.label for p in read_pairs(path)] == [1, 0]


# ------------------------------------------------------------------------------------ formats
def test_tsv_without_header_with_header_and_unlabelled_two_columns(tmp_path):
    plain = write(tmp_path, 'how "do" i pay\thow to pay\t1\nwhere is it\twhat is it\t0\n', name="train.tsv")
    assert [(p.text_a, p.label) for p in read_pairs(plain, TSV)] == [('how "do" i pay', 1), ("where is it", 0)]
    headed = write(tmp_path, "text_a\ttext_b\tlabel\nx\ty\t1\n", name="dev.tsv")
    assert [(p.text_a, p.label, p.id) for p in read_pairs(headed, TSV)] == [("x", 1, 0)]
    test = write(tmp_path, "x\ty\nz\tw\n", name="test.tsv")
    assert [(p.text_b, p.label) for p in read_pairs(test, TSV, require_labels=False)] == [("y", None), ("w", None)]
    with pytest.raises(DataError, match=r"train.tsv:2: label is \"yes\""):
        read_pairs(write(tmp_path, "x\ty\t1\nx\ty\tyes\n", name="train.tsv"), TSV)
    with pytest.raises(DataError, match=r"train.tsv:1: 1 tab-separated column\(s\).*data.format=csv"):
        read_pairs(write(tmp_path, "x,y,1\n", name="train.tsv"), TSV)


def test_tsv_and_csv_with_named_columns(tmp_path):
    pawsx = ReadSpec(format="tsv", fields=("sentence1", "sentence2", "label", "id"))
    path = write(tmp_path, "id\tsentence1\tsentence2\tlabel\n7\ta b\tb a\t1\n8\tc\td\t0\n", name="dev_2k.tsv")
    assert [(p.id, p.text_a, p.label) for p in read_pairs(path, pawsx)] == [("7", "a b", 1), ("8", "c", 0)]
    mine = ReadSpec(format="csv", fields=("q1", "q2", "answer", None), labels=("different", "same"))
    csv_file = write(tmp_path, 'q1,q2,answer\n"hi, there","hello, there",same\nbye,hello,different\n', name="x.csv")
    assert [(p.text_a, p.label) for p in read_pairs(csv_file, mine)] == [("hi, there", 1), ("bye", 0)]
    with pytest.raises(DataError, match=r"x.csv:1: the header names the columns q1, q2, answer; "
                       r"data.fields.text_a=question is not one of them"):  # fmt: skip
        read_pairs(csv_file, ReadSpec(format="csv", fields=("question", "q2", "answer", None)))


def test_one_json_array_is_read_item_by_item(tmp_path, monkeypatch):
    import afqmc_exp.data.formats as formats

    monkeypatch.setattr(formats, "ARRAY_BLOCK", 64)  # items cut across reads
    chip = ReadSpec(format="json_array", fields=("text1", "text2", "label", "id"))
    items = [{"id": f"s{i}", "text1": f"问题{i}" * 5, "text2": "回答", "label": str(i % 2), "category": "diabetes"}
             for i in range(30)]  # fmt: skip
    path = write(tmp_path, json.dumps(items, ensure_ascii=False, indent=2), name="CHIP-STS_train.json")
    pairs = read_pairs(path, chip)
    assert [p.id for p in pairs] == [f"s{i}" for i in range(30)] and [p.label for p in pairs] == [
        i % 2 for i in range(30)
    ]
    broken = write(tmp_path, json.dumps(items[:3], indent=2)[:-2] + ",\n  {oops}\n]", name="broken.json")
    with pytest.raises(DataError, match=r"broken.json:\d+: not valid JSON"):
        read_pairs(broken, chip)
    with pytest.raises(DataError, match=r"lines.json:1: the file is not one JSON array \(set data.format=jsonl\)"):
        read_pairs(write(tmp_path, GOOD + "\n", name="lines.json"), chip)
    unlabelled = write(tmp_path, json.dumps([{"id": "a", "text1": "x", "text2": "y", "label": ""}]), name="test.json")
    assert read_pairs(unlabelled, chip, require_labels=False)[0].label is None


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"a": ["x", "y"], "b": ["z", "w"], "y": [1, 0]}), path)
    spec = ReadSpec(format="parquet", fields=("a", "b", "y", None))
    assert [(p.text_a, p.label, p.id) for p in read_pairs(path, spec)] == [("x", 1, 0), ("y", 0, 1)]
    with pytest.raises(DataError, match=r"train.parquet: no column 'q' \(data.fields.text_a\)"):
        read_pairs(path, ReadSpec(format="parquet", fields=("q", "b", "y", None)))


# ------------------------------------------------------------------------------------ official archives
def test_missing_official_files_offline_fail_at_once_with_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"afqmc_public.zip.*unzip it into .*data.dir="):
        PairData(dir=str(tmp_path / "afqmc")).check()


@pytest.mark.parametrize(
    "task,where", [("lcqmc", "icrc.hitsz.edu.cn"), ("bq", "icrc.hitsz.edu.cn"), ("chip_sts", "tianchi.aliyun.com")]
)
def test_licensed_tasks_say_where_to_obtain_their_files(tmp_path, task, where):
    from hydra.utils import instantiate

    from helpers import compose

    data = instantiate(compose(["model=minilm", f"data={task}", f"data.dir={tmp_path / task}"]).data)
    with pytest.raises(DataError, match=rf"{task}: .* not there; .*{where}") as refused:
        data.check()
    assert len(str(refused.value).splitlines()) == 1


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
    checked = PairData(dir=str(tmp_path / "afqmc")).check()
    assert {k: v.stats.pairs for k, v in checked.items()} == {"train": 1, "dev": 1, "test": 1}
    (cache / "afqmc_public.zip.sha256").write_text("0" * 64)
    (tmp_path / "afqmc" / "train.json").unlink()
    with pytest.raises(DataError, match="checksum differs"):
        PairData(dir=str(tmp_path / "afqmc")).check()


def afqmc_zip_in_cache(cache):
    """The AFQMC archive as the cache holds it after its download (trusted on first use)."""
    import hashlib
    import zipfile

    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / "afqmc_public.zip", "w") as archive:
        for name in ("train.json", "dev.json"):
            archive.writestr(name, GOOD + "\n")
        archive.writestr("test.json", '{"id": 0, "sentence1": "a", "sentence2": "b"}\n')
    digest = hashlib.sha256((cache / "afqmc_public.zip").read_bytes()).hexdigest()
    (cache / "afqmc_public.zip.sha256").write_text(digest)


def test_an_archive_is_never_unpacked_into_a_folder_of_the_users_own_files(tmp_path, monkeypatch):
    afqmc_zip_in_cache(tmp_path / "cache")
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("train.json", "dev.json"):
        write(mine, '{"sentence1": "mine", "sentence2": "mine too", "label": "0"}\n', name=name)
    with pytest.raises(DataError, match=r"mine: test.json not there, and the folder holds other files \(dev.json, "
                       r"train.json\), so the official afqmc files are not unpacked into it: put test.json there, set "
                       r"data.test_file=null, or point data.dir at an empty folder") as refused:  # fmt: skip
        PairData(dir=str(mine)).check()
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(DataError, match=r"test.json not there; this task has no official archive"):
        PairData(dir=str(mine), name="pairs").check()  # data=pairs: no task's archive is its own
    assert sorted(os.listdir(mine)) == ["dev.json", "train.json"]
    assert "mine" in (mine / "train.json").read_text()
    PairData(dir=str(tmp_path / "empty")).check()  # an empty (new) folder gets the official files
    assert sorted(os.listdir(tmp_path / "empty")) == [".afqmc_exp_unpacked.json", "dev.json", "test.json", "train.json"]


OTHER_TASKS = [  # a folder of a task's official files, as the default task (afqmc) or another one reads it
    ("lcqmc", ["train.tsv", "dev.tsv", "test.tsv"], "afqmc", r"lcqmc or bq's files \(train.tsv, dev.tsv\), not afqmc's "
     r"\(train.json, dev.json, test.json missing\); to train on them, add data=lcqmc or data=bq"),
    ("ocnli", ["train.50k.json", "dev.json", "test.json"], "afqmc", r"ocnli's files .*add data=ocnli"),
    ("pawsx", ["translated_train.tsv", "dev_2k.tsv", "test_2k.tsv"], "afqmc", r"pawsx's files .*add data=pawsx"),
    ("chip_sts", ["CHIP-STS_train.json", "CHIP-STS_dev.json", "CHIP-STS_test.json"], "afqmc",
     r"chip_sts's files .*add data=chip_sts"),
    ("afqmc", ["train.json", "dev.json", "test.json"], "lcqmc",
     r"afqmc or cmnli's files .*add data=afqmc or data=cmnli"),
]  # fmt: skip


@pytest.mark.parametrize("task,files,read_as,message", OTHER_TASKS, ids=[t[0] for t in OTHER_TASKS])
def test_a_folder_of_another_tasks_files_names_that_task_and_fetches_nothing(tmp_path, monkeypatch, task, files,
                                                                              read_as, message):  # fmt: skip
    from hydra.utils import instantiate

    from helpers import compose

    afqmc_zip_in_cache(tmp_path / "cache")
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / task
    folder.mkdir()
    for name in files:
        (folder / name).write_text("x\n")
    data = instantiate(compose(["model=minilm", f"data={read_as}", f"data.dir={folder}"]).data)
    with pytest.raises(DataError, match=message) as refused:
        data.check()
    assert len(str(refused.value).splitlines()) == 1 and sorted(os.listdir(folder)) == sorted(files)


def test_the_official_files_table_agrees_with_each_tasks_config():
    from afqmc_exp.data.download import OFFICIAL_FILES
    from helpers import compose

    for task, files in OFFICIAL_FILES.items():
        data = compose(["model=minilm", f"data={task}", "data.dir=/x"]).data
        assert (data.train_file, data.dev_file, data.test_file) == files, task


@pytest.fixture
def archive_server(tmp_path):
    """Serves the files of ``tmp_path/served`` on loopback, as the tasks' origins serve their archives."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_an_archive_is_downloaded_once_trusted_on_first_use_and_unpacked(tmp_path, monkeypatch, archive_server):
    import io
    import tarfile

    served, url = archive_server
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with tarfile.open(served / "x-final.tar.gz", "w:gz") as tar:
        for name in ("translated_train.tsv", "dev_2k.tsv", "test_2k.tsv"):
            data = b"id\tsentence1\tsentence2\tlabel\n1\ta\tb\t1\n2\tc\td\t0\n"
            info = tarfile.TarInfo(f"x-final/zh/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"x-final/en/{name}")  # another language's file of the same name: not taken
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    data = PairData(dir=str(tmp_path / "pawsx"), name="pawsx", format="tsv", train_file="translated_train.tsv",
                    dev_file="dev_2k.tsv", test_file="test_2k.tsv", archive_url=f"{url}/x-final.tar.gz",
                    fields={"text_a": "sentence1", "text_b": "sentence2", "label": "label", "id": "id"})  # fmt: skip
    checked = data.check()
    assert {k: v.stats.pairs for k, v in checked.items()} == {"train": 2, "dev": 2, "test": 2}
    assert (tmp_path / "cache" / "x-final.tar.gz.sha256").exists()
    (served / "x-final.tar.gz").unlink()  # from now on only the cached copy exists
    (tmp_path / "pawsx" / "dev_2k.tsv").unlink()
    assert data.check()["dev"].stats.pairs == 2
    (tmp_path / "cache" / "x-final.tar.gz").write_bytes(b"swapped")
    (tmp_path / "pawsx" / "dev_2k.tsv").unlink()
    with pytest.raises(DataError, match="checksum differs from the one recorded at download"):
        data.check()


def test_a_failed_download_is_one_line_with_where_to_get_the_files(tmp_path, monkeypatch, archive_server):
    _, url = archive_server
    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = PairData(dir=str(tmp_path / "cmnli"), name="cmnli", archive_url=f"{url}/cmnli_public.zip")
    with pytest.raises(DataError, match=r"cmnli files train.json, dev.json, test.json are not there and download of "
                       r"http://127.0.0.1:\d+/cmnli_public.zip failed: HTTP Error 404") as refused:  # fmt: skip
        data.check()
    assert len(str(refused.value).splitlines()) == 1 and not (tmp_path / "cache" / "cmnli_public.zip").exists()


def test_an_archive_two_processes_download_at_once_is_whole_and_its_checksum_agrees(tmp_path, monkeypatch):
    """Two commands on a new machine fetch the same archive at the same moment (data=cmnli and data=ocnli share one):
    each downloads into files of its own, so neither truncates nor renames away the other's; the archive left in
    place matches the checksum beside it, and a command reading the first checksum never sees it rewritten in place."""
    import io

    from afqmc_exp.data import download

    archive = download.Archive(url="http://example.invalid/shared.zip", members={}, tasks=("cmnli",))
    path, digest_path = tmp_path / "shared.zip", tmp_path / "shared.zip.sha256"
    (tmp_path / "reader").mkdir()
    opened = tmp_path / "reader" / "opened.sha256"  # the checksum file as a reader opened it: the same file, linked

    class Response(io.BytesIO):
        def __init__(self, payload, during=None):
            super().__init__(payload)
            self.during = during

        def read(self, size=-1):
            if self.during is not None and self.tell() > 0:  # halfway: the other command's download runs whole
                during, self.during = self.during, None
                during()
            return super().read(min(size, 1 << 16) if size and size > 0 else 1 << 16)

    def failed(why):
        return DataError(why)

    def the_other_command():
        monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: Response(b"theirs " * 100_000))
        download._download(archive, path, digest_path, failed, 5.0)
        os.link(digest_path, opened)

    mine = b"the archive's bytes " * 100_000
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: Response(mine, the_other_command))
    download._download(archive, path, digest_path, failed, 5.0)
    assert path.read_bytes() == mine and digest_path.read_text().strip() == download.file_digest(path)
    assert opened.read_text().strip() == download.hashlib.sha256(b"theirs " * 100_000).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reader", "shared.zip", "shared.zip.sha256"]


def test_checked_files_are_remembered_by_their_bytes(tmp_path, monkeypatch):
    import afqmc_exp.data.token_cache as token_cache

    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    for name in ("train.json", "dev.json"):
        write(tmp_path, GOOD + "\n" + GOOD + "\n", name=name)
    data = PairData(dir=str(tmp_path), test_file=None)
    assert data.check()["train"].stats.pairs == 2

    class NotAgain(PairReader):
        def __iter__(self):
            raise AssertionError("read again")

    monkeypatch.setattr(token_cache, "PairReader", NotAgain)
    assert data.check()["train"].stats.pairs == 2  # the same bytes: remembered
    write(tmp_path, GOOD + "\n", name="train.json")
    with pytest.raises(AssertionError, match="read again"):  # other bytes: checked again
        data.check()


# ------------------------------------------------------------------------------------ what a file really is
@pytest.mark.parametrize(
    "content,message",
    [
        (b"\xff\xfe" + GOOD.encode("utf-16-le"), r"train.json: UTF-16 \(little-endian\) text;"
         r" convert it to UTF-8: iconv -f UTF-16 -t UTF-8 "),
        (b"\xfe\xff" + GOOD.encode("utf-16-be"), r"train.json: UTF-16 \(big-endian\) text; convert it"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 20, r"train.json: a gzip file, not text; unpack it first: gunzip"),
        (b"PK\x03\x04" + b"\x00" * 20, r"train.json: a zip archive, not text; unzip it"),
        (b"PAR1" + b"\x00" * 20, r"train.json: a Parquet file; set data.format=parquet"),
        (GOOD.encode("gbk"), r"train.json:1: bytes that are not UTF-8.*Chinese data often comes as GBK; iconv -f GBK"),
        (b'{"sentence1": "\xff\xfe\xfd", "sentence2": "b", "label": "0"}', r"train.json:1: bytes that are not UTF-8 "
         r"\(at byte 15 of the line\); fix the file's encoding"),
    ],
    ids=["utf-16-le", "utf-16-be", "gzip", "zip", "parquet", "gbk", "neither"],
)  # fmt: skip
def test_a_file_that_is_not_utf8_text_is_named_for_what_it_is(tmp_path, content, message):
    with pytest.raises(DataError, match=message) as refused:
        read_pairs(write(tmp_path, content))
    assert len(str(refused.value).splitlines()) == 1


def test_an_unclosed_csv_quote_is_reported_where_it_opened(tmp_path):
    rows = ["q1,q2,answer", "a,b,same", '"c is cut,d,same'] + [f"e{i},f{i},different" for i in range(3000)]
    path = write(tmp_path, "\n".join(rows) + "\n", name="x.csv")
    spec = ReadSpec(format="csv", fields=("q1", "q2", "answer", None), labels=("different", "same"))
    with pytest.raises(DataError, match=r"x.csv:3: a quoted cell opened on this line is never closed") as refused:
        read_pairs(path, spec)
    assert len(str(refused.value).splitlines()) == 1


@pytest.mark.parametrize("fmt,name,content", [
    ("csv", "x.csv", "q1,q2,answer\na,b,same\n"),
    ("tsv", "x.tsv", "q1\tq2\tanswer\na\tb\tsame\n"),
])  # fmt: skip
def test_a_label_column_the_header_lacks_is_named_with_its_key(tmp_path, fmt, name, content):
    path = write(tmp_path, content, name=name)
    spec = ReadSpec(format=fmt, fields=("q1", "q2", "verdict", None), labels=("different", "same"))
    with pytest.raises(DataError, match=rf"{name}:1: the header names the columns q1, q2, answer; "
                       r"data.fields.label=verdict is not one of them"):  # fmt: skip
        read_pairs(path, spec)
    assert [p.label for p in read_pairs(path, spec, require_labels=False)] == [None]  # a test file may lack it


def test_a_data_file_key_naming_a_folder_is_one_line_with_the_key(tmp_path):
    write(tmp_path, GOOD + "\n")
    (tmp_path / "dev").mkdir()
    with pytest.raises(DataError, match=r"dev: is a folder; data.dev_file=dev must name a file") as refused:
        PairData(dir=str(tmp_path), dev_file="dev", test_file=None).check()
    assert len(str(refused.value).splitlines()) == 1


def test_blank_machine_translations_are_dropped_and_counted_where_the_task_says(tmp_path):
    """PAWS-X's translated_train.tsv, as distributed, has blank translations (google-research-datasets/paws#4)."""
    content = "id\tsentence1\tsentence2\tlabel\n1\ta\tb\t1\n2\t\tc\t0\n3\td\t \t1\n4\te\tf\t0\n"
    path = write(tmp_path, content, name="translated_train.tsv")
    spec = ReadSpec(format="tsv", fields=("sentence1", "sentence2", "label", "id"))
    with pytest.raises(DataError, match=r"translated_train.tsv:3: sentence1 \(text_a\) is \"\""):
        read_pairs(path, spec)  # a task that does not say so: a blank sentence is an error
    reader = PairReader(path, replace(spec, drop_blank=True))
    assert [p.id for p in reader] == ["1", "4"] and reader.stats.blank == 2
    from afqmc_exp.data.task import describe

    assert (
        describe(reader.stats, ["0", "1"]) == "2 pairs (0: 1, 1: 1); dropped 2 with a blank sentence (data.drop_blank)"
    )


def test_the_pawsx_option_drops_blank_translations():
    from helpers import compose

    assert compose(["model=minilm", "data=pawsx", "data.dir=/x"]).data.drop_blank is True
    assert compose(["model=minilm", "data=afqmc"]).data.drop_blank is False


def test_a_limit_is_said_beside_the_files_count_and_applies_to_its_split(tmp_path):
    from helpers import tiny_pretrained

    for name, n in (("train.json", 12), ("dev.json", 9), ("test.json", 7)):
        write(tmp_path, "".join(GOOD + "\n" for _ in range(n)), name=name)
    data = PairData(dir=str(tmp_path), dev_limit=4, test_limit=100)
    checked = data.check()
    assert data.summary(checked)[1].endswith("dev.json: 9 pairs (0: 0, 1: 9); the first 4 used (data.dev_limit)")
    assert data.summary(checked)[2].endswith("; the first 7 used (data.test_limit)")  # no more than the file has
    splits = data.tokenize(tiny_pretrained(tmp_path / "tiny").tokenizer, checked)
    assert {name: len(split) for name, split in splits.items()} == {"train": 12, "dev": 4, "test": 7}


def test_a_model_whose_tokenizer_cannot_read_the_data_is_said_before_training(tmp_path, caplog):
    from afqmc_exp.data import Pair
    from afqmc_exp.training.run import warn_if_unreadable
    from helpers import pairs_split, tiny_pairs, tiny_pretrained

    pretrained = tiny_pretrained(tmp_path / "tiny")  # a vocabulary of a few English words
    unknown = pretrained.tokenizer.unk_token_id
    readable = pairs_split(tiny_pairs(20), pretrained.tokenizer, 24)
    chinese = [Pair("花呗怎么还款", "花呗如何还钱", 1, 0), Pair("借呗额度", "open account", 0, 1)]  # 16 of 18 unknown
    mixed = pairs_split(chinese, pretrained.tokenizer, 24)
    assert readable.unknown_share(unknown) == 0.0 and mixed.unknown_share(unknown) == pytest.approx(16 / 18)
    caplog.set_level("WARNING", logger="afqmc_exp.training.run")
    warn_if_unreadable(readable, pretrained)
    assert not caplog.records
    warn_if_unreadable(mixed, pretrained)
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("89% of the training text is [UNK] to ") and "model=bert or model=roberta" in said
