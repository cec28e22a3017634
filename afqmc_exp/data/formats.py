"""Reading sentence-pair files in every format the tasks come in, one checked pair at a time.

Why it looks like this:

* **One checker, five readers.** A reader per format (JSON lines, TSV, CSV, one JSON array, Parquet) turns a
  file into rows of four cells (first text, second text, label, id, each possibly absent) with their line
  numbers; :class:`PairReader` checks every row the same way and yields :class:`Pair` values. Which column
  is which is the task's ``fields`` (names, or positions in a headerless TSV).
* **Streaming.** Nothing is held per pair but the id check's 8-byte hash, so memory does not grow with the
  file; the token cache (``token_cache``) consumes the pairs as they come.
* **Every error names the file, the line and the fix** (:class:`DataError`), and a bad file is found before
  any model loads (``task``).
* **Lines are what an editor shows.** ``\\n``, ``\\r\\n`` and a lone ``\\r`` (old Mac files) end a line; U+2028,
  U+0085 and the other separators ``str.splitlines`` also cuts at are text inside a sentence. A UTF-8 BOM is
  dropped; other bytes that are not UTF-8 are an error on their line.
* **Labels are the file's own values**, mapped to class ids by the task's ordered ``labels`` (an integer
  label is read as its digits: ``1`` and ``"1"`` are one class). ``drop_labels`` (CMNLI and OCNLI's ``"-"``:
  the annotators did not agree) are skipped and counted. A file is labelled on every line (it is trained or
  scored on) or on none (it is predicted); an empty label cell or a JSON ``null`` is no label.
* **Sentences must hold something visible**: not only whitespace, zero-width characters or escaped control
  characters.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

Format = Literal["jsonl", "tsv", "csv", "json_array", "parquet"]
FIELDS = ("text_a", "text_b", "label", "id")
MISSING = object()  # a cell the row does not have
HEADER_WORDS = {"text_a", "text_b", "sentence1", "sentence2", "sentence", "query", "query1", "query2", "question",
                "question1", "question2", "premise", "hypothesis", "q1", "q2", "text1", "text2", "label", "labels",
                "id", "index", "qid", "pid"}  # fmt: skip
ARRAY_BLOCK = 1 << 20  # characters of a JSON array read at a time
ARRAY_ITEM_LIMIT = 16 << 20  # one item longer than this is not an item being read: the file is broken there


class DataError(ValueError):
    """A data file cannot be used; the message names the file, the line and what to do."""


class Pair(NamedTuple):
    text_a: str
    text_b: str
    label: int | None = None  # the class id (an index into the task's labels); None when unlabelled
    id: object = None  # the file's id field, else the pair's 0-based position among the file's pairs


@dataclass(frozen=True)
class ReadSpec:
    """How to read a task's files: the format, which column is which, and the labels in class-id order."""

    format: Format = "jsonl"
    fields: tuple = ("sentence1", "sentence2", "label", "id")  # text_a, text_b, label, id: names or positions
    labels: tuple[str, ...] = ("0", "1")
    drop_labels: tuple[str, ...] = ()
    drop_blank: bool = False  # lines with a blank sentence are skipped and counted (PAWS-X's machine translations)

    def describe(self) -> dict:
        """What the cache keys name (see ``token_cache``); ``drop_blank`` only when set, so the keys of every file
        read without it stay what they were."""
        described = {"format": self.format, "fields": list(self.fields), "labels": list(self.labels),
                     "drop_labels": list(self.drop_labels)}  # fmt: skip
        return {**described, "drop_blank": True} if self.drop_blank else described


@dataclass
class FileStats:
    """What a full read of a file found."""

    pairs: int = 0
    labelled: bool = True
    label_counts: list[int] = field(default_factory=list)  # per class id
    dropped: dict[str, int] = field(default_factory=dict)  # dropped label -> lines
    blank: int = 0  # lines dropped for a blank sentence (``drop_blank``)


# ------------------------------------------------------------------------------------------ lines and values
def check_file(path: Path) -> None:
    """A file that can be read: it exists and is a regular file (a named pipe would hang the reader)."""
    if not path.exists():
        raise DataError(f"{path}: file not found; check data.dir and the data.*_file names (data.dir is the folder)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (a pipe or a device?); copy the data into a file")


SIGNATURES = (  # how a file that is not UTF-8 text begins, and what to do with it ({path}: the file, quoted)
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian) text; convert it to UTF-8: iconv -f UTF-32 -t UTF-8 {path}"),
    (b"\xff\xfe", "UTF-16 (little-endian) text; convert it to UTF-8: iconv -f UTF-16 -t UTF-8 {path}"),
    (b"\xfe\xff", "UTF-16 (big-endian) text; convert it to UTF-8: iconv -f UTF-16 -t UTF-8 {path}"),
    (b"\x1f\x8b", "a gzip file, not text; unpack it first: gunzip -k {path}"),
    (b"PK\x03\x04", "a zip archive, not text; unzip it and point data.dir at the folder of its files"),
    (b"BZh", "a bzip2 file, not text; unpack it first: bunzip2 -k {path}"),
    (b"\xfd7zXZ\x00", "an xz file, not text; unpack it first: unxz -k {path}"),
    (b"PAR1", "a Parquet file; set data.format=parquet"),
)


def not_text(path: Path) -> str | None:
    """What a file is when its first bytes say it is not UTF-8 text (UTF-16, an archive, Parquet); None otherwise."""
    with open(path, "rb") as binary:
        head = binary.read(8)
    found = next((what for magic, what in SIGNATURES if head.startswith(magic)), None)
    return found.format(path=shlex.quote(str(path))) if found else None


def _not_utf8(path: Path, number: int, raw: bytes, error: UnicodeDecodeError) -> DataError:
    where = f"{path}:{number}: bytes that are not UTF-8 (at byte {error.start} of the line)"
    try:
        raw.decode("gbk")
    except UnicodeDecodeError:
        return DataError(f"{where}; fix the file's encoding (every line must be UTF-8) or delete this line")
    fixed = shlex.quote(f"fixed{path.suffix}")
    return DataError(f"{where}. Chinese data often comes as GBK; iconv -f GBK -t UTF-8 {shlex.quote(str(path))} > "
                     f"{fixed} converts it")  # fmt: skip


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line, as an editor numbers them (see the module docstring)."""
    check_file(path)
    what = not_text(path)
    if what:
        raise DataError(f"{path}: {what}")
    number = 0
    with open(path, "rb") as binary:
        for raw in binary:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, number + 1, raw, err) from None
            if number == 0:
                text = text.removeprefix("\ufeff")
            text = text.removesuffix("\n").removesuffix("\r")
            for part in text.split("\r") if "\r" in text else (text,):
                number += 1
                yield number, part


def visible(text: str) -> bool:
    """Whether ``text`` holds a character one can see (not only spaces, zero-width or control characters)."""
    stripped = text.strip()
    return bool(stripped) and (stripped[0].isprintable() or any(c.isprintable() and not c.isspace() for c in stripped))


def label_text(value: object, where: str) -> str | None:
    """A label cell as the text the task's labels are written in; None when the row has no label."""
    if value is MISSING or value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                          and not value.is_integer()):  # fmt: skip
        raise DataError(f"{where}: label is {_shown(value)}; a label is a string or an integer")
    try:
        return str(int(value))
    except ValueError:  # more digits than Python turns into text
        raise DataError(f"{where}: label is a number of thousands of digits; fix or delete this line") from None


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------ the readers
Row = tuple[int, tuple]  # (line number, (text_a, text_b, label, id) cells, MISSING where absent)


def json_object(line: str, where: str, fields: tuple) -> dict:
    """One JSON object, with a key it names twice refused (``json`` would keep the last value silently)."""
    try:
        if any(isinstance(f, str) and line.count(f'"{f}"') > 1 for f in fields):
            obj = json.loads(line, object_pairs_hook=lambda items: _no_repeats(items, where))
        else:
            obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: not valid JSON ({err.msg}, column {err.colno}); each line must be one object such as "
            '{"sentence1": "...", "sentence2": "...", "label": "0"}'
        ) from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to be a sentence pair; fix or delete this line") from None
    except ValueError as err:  # e.g. an integer of more digits than Python reads
        raise DataError(f"{where}: not a usable JSON value ({str(err).splitlines()[0]}); fix or delete it") from None
    if not isinstance(obj, dict):
        names = " and ".join(f for f in fields[:2])
        raise DataError(f"{where}: a JSON {type(obj).__name__}, expected an object with {names} and the label")
    return obj


def _no_repeats(items: list, where: str) -> dict:
    keys = Counter(key for key, _ in items)
    repeated = [key for key, count in keys.items() if count > 1]
    if repeated:
        raise DataError(f"{where}: the key {repeated[0]!r} appears twice on this line; keep one")
    return dict(items)


def _cells(obj: dict, fields: tuple) -> tuple:
    return tuple(obj.get(f, MISSING) if f is not None else MISSING for f in fields)


def not_lines(line: str, where: str) -> None:
    """A first line that says the file is written in another format: refused with the ``data.format`` to set."""
    start = line.lstrip()[:1]
    if start == "[":
        raise DataError(f"{where}: the file is one JSON array, not JSON lines (one object per line); "
                        "set data.format=json_array to read it as it is")  # fmt: skip
    delimited = "tsv" if "\t" in line else "csv" if "," in line else None
    if start != "{" and delimited:
        raise DataError(f"{where}: a {delimited.upper()} line, not JSON lines (one object per line); set "
                        f"data.format={delimited} (and data.fields to its columns) to read it as it is")  # fmt: skip


def read_json_lines(path: Path, fields: tuple) -> Iterator[Row]:
    first = True
    for number, line in text_lines(path):
        if not line.strip():
            continue
        if first:
            not_lines(line, f"{path}:{number}")
        first = False
        yield number, _cells(json_object(line, f"{path}:{number}", fields), fields)


class _ArrayText:
    """The text of a JSON array file, held one block at a time, and the line number of any position in it."""

    SPACE = re.compile(r"\s*")

    def __init__(self, path: Path):
        self.path, self.lines = path, text_lines(path)
        self.text, self.pos, self.done = "", 0, False
        self.line, self.counted_to = 1, 0  # the line number at ``counted_to``

    def more(self) -> bool:
        """Drop what was read and append about ``ARRAY_BLOCK`` more characters; False at the end of the file."""
        self.where()
        self.text, self.pos, self.counted_to = self.text[self.pos :], 0, 0
        added, size = [], 0
        for _, line in self.lines:
            added.append(line)
            size += len(line)
            if size > ARRAY_BLOCK:
                break
        else:
            self.done = True
        self.text += "".join(f"{line}\n" for line in added)
        return bool(added)

    def next_char(self) -> str:
        """The next character that is not whitespace ("" at the end of the file), where ``pos`` now is."""
        while True:
            self.pos = self.SPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or self.done or not self.more():
                return self.text[self.pos : self.pos + 1]

    def where(self) -> str:
        self.line += self.text.count("\n", self.counted_to, self.pos)
        self.counted_to = self.pos
        return f"{self.path}:{self.line}"

    def item(self, decoder: json.JSONDecoder) -> tuple[int, object]:
        """The line and value of the item at ``pos`` (more text is read while it is cut off)."""
        line = int(self.where().rsplit(":", 1)[1])
        while True:
            try:
                value, self.pos = decoder.raw_decode(self.text, self.pos)
                return line, value
            except json.JSONDecodeError as err:
                if self.done or len(self.text) - self.pos > ARRAY_ITEM_LIMIT or not self.more():
                    raise DataError(f"{self.where()}: not valid JSON ({err.msg}); each item is one object") from None
            except RecursionError:
                raise DataError(f"{self.where()}: JSON nested too deeply to be a sentence pair") from None


def read_json_array(path: Path, fields: tuple) -> Iterator[Row]:
    """The items of one JSON array (``[{...}, {...}]``), decoded as they are reached, not all at once."""
    decoder, text = json.JSONDecoder(), _ArrayText(path)
    start = text.next_char()
    if not start:
        raise DataError(f"{path}: the file is empty (or only blank lines); it must hold one JSON array of pairs")
    if start != "[":
        hint = "set data.format=jsonl" if start == "{" else "the file must hold one JSON array of objects"
        raise DataError(f"{text.where()}: the file is not one JSON array ({hint})")
    text.pos += 1
    while (char := text.next_char()) != "]":
        if not char:
            raise DataError(f"{text.where()}: the array is not closed with ']' (a cut file?)")
        line, obj = text.item(decoder)
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line}: a JSON {type(obj).__name__} in the array; each item is one object")
        yield line, _cells(obj, fields)
        char = text.next_char()
        if char == ",":
            text.pos += 1
        elif char != "]":
            raise DataError(f"{text.where()}: expected ',' or ']' after an item")
    text.pos += 1
    if text.next_char():
        raise DataError(f"{text.where()}: text after the array's closing ']'; remove it")


def read_delimited(path: Path, fields: tuple, delimiter: str, is_label: Callable[[str], bool],
                   labelled: bool = False) -> Iterator[Row]:  # fmt: skip
    """Rows of a TSV (split at tabs, no quoting: question files hold quotes as text) or a CSV (quoted cells).
    Fields are header names (the first line must then be the header) or 0-based column positions; with
    positions, a first line of column names (``text_a``, ``query``, ``label``...) is recognised and skipped.
    ``labelled``: the file must have its label column (a training or scoring file)."""
    numbered = _delimited_rows(path, delimiter)
    by_name = any(isinstance(f, str) for f in fields)
    positions = fields
    for number, cells in numbered:
        if by_name:
            positions = _header_positions(cells, fields, f"{path}:{number}", labelled)
        elif not _is_header(cells, fields, is_label):
            yield number, _pick(cells, positions, f"{path}:{number}", delimiter)
        break
    for number, cells in numbered:
        yield number, _pick(cells, positions, f"{path}:{number}", delimiter)


def _delimited_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    if delimiter == "\t":
        for number, line in text_lines(path):
            if line.strip():
                yield number, line.split("\t")
        return
    numbers: list[int] = []  # the line number of every line the CSV reader has taken

    def lines():
        for number, line in text_lines(path):
            numbers.append(number)
            yield line + "\n"

    taken = 0  # lines taken before the record being read: it starts on line numbers[taken]
    try:  # strict: a quote never closed is an error where the record starts, not a cell up to the end of the file
        for cells in csv.reader(lines(), strict=True):
            start, taken = numbers[taken], len(numbers)
            if cells and any(c.strip() for c in cells):
                yield start, cells
    except csv.Error as err:
        start = numbers[taken] if taken < len(numbers) else (numbers[-1] if numbers else 1)
        if "unexpected end of data" in str(err):
            raise DataError(f'{path}:{start}: a quoted cell opened on this line is never closed; close its quote '
                            '(a quote inside a quoted cell is written twice: "")') from None  # fmt: skip
        raise DataError(f"{path}:{start}: not valid CSV ({err})") from None


def _header_positions(header: list[str], fields: tuple, where: str, labelled: bool) -> tuple:
    names = [cell.strip() for cell in header]
    positions = []
    for role, name in zip(FIELDS, fields, strict=True):
        if name is None or isinstance(name, int):
            positions.append(name)
        elif name in names:
            positions.append(names.index(name))
        elif role in ("text_a", "text_b") or (role == "label" and labelled):
            raise DataError(f"{where}: the header names the columns {', '.join(names)}; data.fields.{role}={name} is "
                            "not one of them (name a column, or give its 0-based position)")  # fmt: skip
        else:
            positions.append(None)  # an optional column the file does not have (a test file's label)
    return tuple(positions)


def _is_header(cells: list[str], positions: tuple, is_label: Callable[[str], bool]) -> bool:
    words = {cell.strip().lower() for cell in cells}
    label_at = positions[2]
    labelled = label_at is not None and label_at < len(cells) and is_label(cells[label_at].strip())
    return bool(words & HEADER_WORDS) and not labelled


def _pick(cells: list[str], positions: tuple, where: str, delimiter: str) -> tuple:
    needed = max(p for p in positions[:2])
    if len(cells) <= needed:
        kind = "tab-separated" if delimiter == "\t" else "comma-separated"
        other = "data.format=csv" if delimiter == "\t" else "data.format=tsv"
        raise DataError(f"{where}: {len(cells)} {kind} column(s), but data.fields needs column {needed} (0-based); "
                        f"fix the line, or is the file {other}?")  # fmt: skip
    return tuple(cells[p].strip() if p is not None and p < len(cells) else MISSING for p in positions)


def read_parquet(path: Path, fields: tuple) -> Iterator[Row]:
    check_file(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: data.format=parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # (pyarrow raises several kinds for a file that is not Parquet)
        raise DataError(f"{path}: not a Parquet file ({str(err).splitlines()[0]})") from None
    names = table.schema_arrow.names
    for role, name in zip(FIELDS[:2], fields[:2], strict=True):
        if name not in names:
            raise DataError(f"{path}: no column {name!r} (data.fields.{role}); its columns are {', '.join(names)}")
    present = [f for f in fields if f in names]
    number = 0
    for batch in table.iter_batches(batch_size=65536, columns=present):
        columns = {name: batch.column(name).to_pylist() for name in present}
        for i in range(batch.num_rows):
            number += 1
            yield number, tuple(columns[f][i] if f in columns else MISSING for f in fields)


# ------------------------------------------------------------------------------------------ the checker
class PairReader:
    """Iterates the checked pairs of one file; afterwards ``stats`` says what it found.

    ``require_labels``: a training or scoring file must be labelled; otherwise a file may be labelled on
    every line or on none. Ids, where the file gives them, must be unique (predictions are matched by id)."""

    def __init__(self, path: str | Path, spec: ReadSpec, require_labels: bool = True):
        self.path, self.spec, self.require_labels = Path(path), spec, require_labels
        self.index = {label: i for i, label in enumerate(spec.labels)}
        self.stats = FileStats(label_counts=[0] * len(spec.labels))

    def rows(self) -> Iterator[Row]:
        spec, path = self.spec, self.path
        if spec.format == "jsonl":
            return read_json_lines(path, spec.fields)
        if spec.format == "json_array":
            return read_json_array(path, spec.fields)
        if spec.format == "parquet":
            return read_parquet(path, spec.fields)
        delimiter = "\t" if spec.format == "tsv" else ","
        return read_delimited(path, spec.fields, delimiter, self._is_label, self.require_labels)

    def _is_label(self, value: str) -> bool:
        return value in self.index or value in self.spec.drop_labels

    def __iter__(self) -> Iterator[Pair]:
        stats, ids = FileStats(label_counts=[0] * len(self.spec.labels)), IdCheck(self)
        first_line = labelled_at = unlabelled_at = 0
        for number, (text_a, text_b, label, pair_id) in self.rows():
            where = f"{self.path}:{number}"
            label_id = self._label(label, where)
            if label_id == -2:  # a dropped label
                stats.dropped[str(label)] = stats.dropped.get(str(label), 0) + 1
                continue
            if self.spec.drop_blank and _blank(text_a, text_b):
                stats.blank += 1
                continue
            self._check_texts(text_a, text_b, where)
            first_line = first_line or number
            if label_id is None:
                unlabelled_at = unlabelled_at or number
            else:
                labelled_at = labelled_at or number
                stats.label_counts[label_id] += 1
            if labelled_at and unlabelled_at:
                self._mixed(number, labelled_at, unlabelled_at)
            if pair_id is MISSING or pair_id is None:
                pair_id = stats.pairs
            else:
                ids.add(pair_id)
            stats.pairs += 1
            yield Pair(text_a, text_b, label_id, pair_id)
        stats.labelled = stats.pairs > 0 and not unlabelled_at
        if not stats.pairs:
            raise DataError(self._empty_message(stats, first_line))
        ids.check()
        self.stats = stats

    def _label(self, value: object, where: str) -> int | None:
        text = label_text(value, where)
        if text is None:
            if self.require_labels:
                raise DataError(f"{where}: no label; training and scoring need one of "
                                f"{self._allowed()} on every line (predict.py scores an unlabelled file)")  # fmt: skip
            return None
        if text in self.spec.drop_labels:
            return -2
        label_id = self.index.get(text)
        if label_id is None:
            dropped = ", data.drop_labels" if self.spec.drop_labels else ""
            raise DataError(f"{where}: label is {_shown(value)}; the labels are {self._allowed()} (data.labels"
                            f"{dropped}); fix or delete this line")  # fmt: skip
        return label_id

    def _allowed(self) -> str:
        return ", ".join(json.dumps(label, ensure_ascii=False) for label in self.spec.labels)

    def _check_texts(self, text_a: object, text_b: object, where: str) -> None:
        for role, name, value in (("text_a", self.spec.fields[0], text_a), ("text_b", self.spec.fields[1], text_b)):
            if not isinstance(value, str) or not visible(value):
                state = "missing" if value is MISSING else _shown(value)
                raise DataError(f"{where}: {name} ({role}) is {state}; it must be a sentence with visible "
                                "characters. Fix or delete this line.")  # fmt: skip
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise DataError(f"{where}: {name} holds an unpaired surrogate escape ({json.dumps(value[err.start])}),"
                                " which is not text; fix or delete this line.") from None  # fmt: skip

    def _mixed(self, number: int, labelled: int, unlabelled: int) -> None:
        raise DataError(
            f"{self.path}:{number}: line {labelled} has a label and line {unlabelled} has none; a file is labelled on "
            "every line (it is scored) or on none (it is predicted). Fix the lines or split the file."
        )

    def _empty_message(self, stats: FileStats, first_line: int) -> str:
        if stats.dropped or stats.blank:
            return f"{self.path}: holds no pairs to use: every line was dropped ({dropped_text(stats)})"
        return (f"{self.path}: the file is empty (or only blank lines); it must hold sentence pairs, e.g. one JSON "
                'object per line: {"sentence1": "...", "sentence2": "...", "label": "0"}')  # fmt: skip


def _blank(text_a: object, text_b: object) -> bool:
    """A sentence present but with nothing visible in it (not a missing column: that stays an error)."""
    return any(isinstance(text, str) and not visible(text) for text in (text_a, text_b))


def dropped_text(stats: FileStats) -> str:
    """``2 labelled '-' (data.drop_labels), 3 with a blank sentence (data.drop_blank)``."""
    parts = [f"{n} labelled {label!r}" for label, n in stats.dropped.items()]
    parts[-1:] = [f"{parts[-1]} (data.drop_labels)"] if parts else []
    return ", ".join(parts + ([f"{stats.blank} with a blank sentence (data.drop_blank)"] if stats.blank else []))


class IdCheck:
    """Whether the ids a file names are unique, keeping 8 bytes per id (their hashes) rather than the ids; a
    clash is then looked up with a second read, to name both lines."""

    def __init__(self, reader: PairReader):
        self.reader, self.hashes, self.pending = reader, [], []

    @staticmethod
    def key(pair_id: object) -> object:
        return pair_id if isinstance(pair_id, (str, int)) else json.dumps(pair_id, ensure_ascii=False, default=str)

    def add(self, pair_id: object) -> None:
        self.pending.append(hash(self.key(pair_id)))
        if len(self.pending) >= 65536:
            self.hashes.append(np.array(self.pending, dtype=np.int64))
            self.pending = []

    def check(self) -> None:
        hashes = np.sort(np.concatenate([*self.hashes, np.array(self.pending, dtype=np.int64)]))
        clashes = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
        if not clashes:
            return
        seen: dict = {}
        for number, cells in self.reader.rows():
            pair_id = cells[3]
            if pair_id is MISSING or pair_id is None or hash(self.key(pair_id)) not in clashes:
                continue
            key = json.dumps(self.key(pair_id), ensure_ascii=False)
            if key in seen:
                raise DataError(f"{self.reader.path}:{number}: id {key} is also on line {seen[key]}; ids must be "
                                "unique (predictions are matched by id)")  # fmt: skip
            seen[key] = number


def read_pairs(path: str | Path, spec: ReadSpec = ReadSpec(), require_labels: bool = True) -> list[Pair]:
    """Every pair of a (small) file in a list: for tests and one-off tools; runs stream (``PairReader``)."""
    return list(PairReader(path, spec, require_labels))


def fields_tuple(fields: dict | Sequence) -> tuple:
    """``data.fields`` (a mapping text_a/text_b/label/id -> column) as the reader's 4-tuple."""
    if isinstance(fields, dict):
        return tuple(fields.get(role) for role in FIELDS)
    return tuple(fields)
