"""Small samples of every task, written by the tests in the task's official format with its pitfalls: "-" labels,
header lines, unlabelled 2-column test lines, ids, extra fields, one JSON array per file.

The sentences are English questions about a payments app (``afqmc_exp.data.quickstart_sample``'s intents and
products), so the offline MiniLM can read them; :func:`nli_pairs` makes a three-class task of them that it can learn.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from afqmc_exp.data.quickstart_sample import INTENTS, PRODUCTS

NLI = ["entailment", "neutral", "contradiction"]


def nli_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(premise, hypothesis, label): the same intent about the same product is entailment, the same intent
    about another product neutral, another intent about the same product contradiction."""
    rng, intents = random.Random(seed), list(INTENTS)
    pairs = []
    for _ in range(n):
        product, intent, label = rng.choice(PRODUCTS), rng.choice(intents), rng.choice(NLI)
        first, second = rng.sample(INTENTS[intent], 2)
        other_product = rng.choice([p for p in PRODUCTS if p != product])
        if label == "neutral":
            pairs.append((first.format(p=product), second.format(p=other_product), label))
        elif label == "contradiction":
            other = rng.choice([i for i in intents if i != intent])
            pairs.append((first.format(p=product), rng.choice(INTENTS[other]).format(p=product), label))
        else:
            pairs.append((first.format(p=product), second.format(p=product), label))
    return pairs


def binary_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    return [(a, b, "1" if label == "entailment" else "0") for a, b, label in nli_pairs(n, seed)]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_task_files(task: str, folder: Path, n_train: int = 40, n_dev: int = 16, n_test: int = 8) -> Path:
    """``task``'s three files, under their official names, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    writers = {"afqmc": _afqmc, "cmnli": _cmnli, "ocnli": _ocnli, "lcqmc": _lcqmc, "bq": _bq, "pawsx": _pawsx,
               "chip_sts": _chip_sts}  # fmt: skip
    writers[task](folder, n_train, n_dev, n_test)
    return folder


def _afqmc(folder: Path, n_train: int, n_dev: int, n_test: int) -> None:
    for name, n, seed in (("train.json", n_train, 1), ("dev.json", n_dev, 2)):
        _jsonl(folder / name, [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in binary_pairs(n, seed)])
    _jsonl(folder / "test.json", [{"id": i, "sentence1": a, "sentence2": b}
                                  for i, (a, b, _) in enumerate(binary_pairs(n_test, 3))])  # fmt: skip


def _nli_rows(n: int, seed: int, extra) -> list[dict]:
    rows = [{"sentence1": a, "sentence2": b, "label": y, **extra(i)} for i, (a, b, y) in enumerate(nli_pairs(n, seed))]
    return rows[:3] + [{**rows[0], "label": "-"}] + rows[3:]  # annotators who did not agree: dropped


def _cmnli(folder: Path, n_train: int, n_dev: int, n_test: int) -> None:
    for name, n, seed in (("train.json", n_train, 1), ("dev.json", n_dev, 2)):
        _jsonl(folder / name, _nli_rows(n, seed, lambda i: {}))
    _jsonl(folder / "test.json", [{"id": i, "sentence1": a, "sentence2": b}
                                  for i, (a, b, _) in enumerate(nli_pairs(n_test, 3))])  # fmt: skip


def _ocnli(folder: Path, n_train: int, n_dev: int, n_test: int) -> None:
    def extra(i):
        return {f"label{k}": NLI[(i + k) % 3] for k in range(5)} | {"genre": "phone", "prem_id": f"p{i}",
                                                                     "id": i, "level": "easy"}  # fmt: skip

    for name, n, seed in (("train.50k.json", n_train, 1), ("dev.json", n_dev, 2)):
        _jsonl(folder / name, _nli_rows(n, seed, extra))
    _jsonl(folder / "test.json", [{"id": i, "sentence1": a, "sentence2": b, "genre": "news"}
                                  for i, (a, b, _) in enumerate(nli_pairs(n_test, 3))])  # fmt: skip


def _tsv(path: Path, rows: list[tuple], header: str | None = None) -> None:
    lines = ([header] if header else []) + ["\t".join(map(str, row)) for row in rows]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")  # Windows line ends, as such files often have


def _lcqmc(folder: Path, n_train: int, n_dev: int, n_test: int) -> None:
    _tsv(folder / "train.tsv", binary_pairs(n_train, 1))  # no header
    _tsv(folder / "dev.tsv", binary_pairs(n_dev, 2), header="text_a\ttext_b\tlabel")
    _tsv(folder / "test.tsv", [(a, b) for a, b, _ in binary_pairs(n_test, 3)])  # 2 columns: unlabelled


def _bq(folder: Path, n_train: int, n_dev: int, n_test: int) -> None:
    _tsv(folder / "train.tsv", binary_pairs(n_train, 1), header="sentence1\tsentence2\tlabel")
    _tsv(folder / "dev.tsv", binary_pairs(n_dev, 2))
    _tsv(folder / "test.tsv", binary_pairs(n_test, 3))  # labelled: scored at the end


def _pawsx(folder: Path, n_train: int, n_dev: int, n_test: int) -> None:
    for name, n, seed in (("translated_train.tsv", n_train, 1), ("dev_2k.tsv", n_dev, 2), ("test_2k.tsv", n_test, 3)):
        _tsv(folder / name, [(i + 1, a, b, y) for i, (a, b, y) in enumerate(binary_pairs(n, seed))],
             header="id\tsentence1\tsentence2\tlabel")  # fmt: skip


def _chip_sts(folder: Path, n_train: int, n_dev: int, n_test: int) -> None:
    def rows(n, seed, labelled=True):
        return [{"id": f"{seed}-{i}", "text1": a, "text2": b, "label": y if labelled else "", "category": "diabetes"}
                for i, (a, b, y) in enumerate(binary_pairs(n, seed))]  # fmt: skip

    for name, items in (("CHIP-STS_train.json", rows(n_train, 1)), ("CHIP-STS_dev.json", rows(n_dev, 2)),
                        ("CHIP-STS_test.json", rows(n_test, 3, labelled=False))):  # fmt: skip
        (folder / name).write_text(json.dumps(items, ensure_ascii=False, indent=2), encoding="utf-8")
