"""Where tokenized pairs live between runs: HF ``datasets`` (Arrow files and a cached ``map``) against afqmc-exp's
token cache (flat memory-mapped arrays), on the same synthetic AFQMC-format file.

    pip install datasets   # only for this comparison; afqmc-exp does not need it
    python benchmarks/token_store.py [--pairs 300000] [--rounds 2] [--data ../shared/data/afqmc]

Each arm runs in a fresh process, alternating arms within each round: **cold** (an empty cache: read the JSON
lines, tokenize with MiniLM's fast tokenizer, max length 128, write the cache), **warm** (a second process
opening what the first wrote), the cache's size on disk, the process's peak resident memory, and the time to
build a random 16-pair training batch (median of 2,000): for ``datasets``, indexing the mapped dataset and
padding with ``DataCollatorWithPadding`` (what HF's Trainer does); for ours, ``PairCollator``. The last line is
one JSON object with medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def batch_ms(collate, n: int) -> float:
    rng, times = random.Random(0), []
    batches = [rng.sample(range(n), 16) for _ in range(2000)]
    for batch in batches:
        started = time.perf_counter()
        collate(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def arm_ours(path: Path, cache: Path) -> dict:
    os.environ["AFQMC_EXP_CACHE"] = str(cache)
    from transformers import AutoTokenizer

    from afqmc_exp.data import PairCollator, PairData
    from afqmc_exp.model import packaged_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    data = PairData(dir=str(path.parent), train_file=path.name, dev_file=path.name, test_file=None)
    started = time.perf_counter()
    split = data.tokenize(tokenizer, {"train": data.check()["train"]})["train"]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "batch_ms": batch_ms(PairCollator(split, tokenizer.pad_token_id), len(split))}


def arm_datasets(path: Path, cache: Path) -> dict:
    from datasets import load_dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from afqmc_exp.model import packaged_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    started = time.perf_counter()
    raw = load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
    mapped = raw.map(lambda rows: tokenizer(rows["sentence1"], rows["sentence2"], truncation=True, max_length=128),
                     batched=True, remove_columns=["sentence1", "sentence2"])  # fmt: skip
    seconds = time.perf_counter() - started
    collator = DataCollatorWithPadding(tokenizer)

    def collate(batch):
        rows = mapped[batch]
        return collator([{k: rows[k][i] for k in ("input_ids", "token_type_ids")} for i in range(len(batch))])

    return {"seconds": seconds, "batch_ms": batch_ms(collate, len(mapped))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "afqmc"))
    parser.add_argument("--work", default="/tmp/afqmc-token-store")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # one measurement, in this fresh process
        arm = {"ours": arm_ours, "datasets": arm_datasets}[args.arm]
        print(json.dumps(arm(Path(args.file), Path(args.cache))))
        return
    from data_scale import afqmc_sentences, write_pairs

    work, data = Path(args.work), Path(args.data)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "train.json"
    write_pairs(path, args.pairs, afqmc_sentences(data), seed=1)
    figures: dict[str, dict[str, list]] = {arm: {} for arm in ("datasets", "ours")}
    for round_ in range(args.rounds):
        for arm in ("datasets", "ours") if round_ % 2 == 0 else ("ours", "datasets"):
            cache = work / f"cache-{arm}-{round_}"
            for phase in ("cold", "warm"):
                result = run_with_usage(arm, path, cache)
                for key, value in result.items():
                    figures[arm].setdefault(f"{phase}_{key}", []).append(value)
            figures[arm].setdefault("disk_mb", []).append(folder_size_mb(cache))
            print(f"round {round_ + 1} {arm}: {json.dumps({k: v[-1] for k, v in figures[arm].items()})}", flush=True)
    medians = {arm: {k: round(statistics.median(v), 3) for k, v in values.items()} for arm, values in figures.items()}
    print(json.dumps({"pairs": args.pairs, "medians": medians}))


def run_with_usage(arm: str, path: Path, cache: Path) -> dict:
    """The arm in a fresh process, with its peak resident memory (the kernel's, from ``wait4``)."""
    command = [sys.executable, __file__, "--arm", arm, "--file", str(path), "--cache", str(cache)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{arm} failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_gb": usage.ru_maxrss / 2**20}


if __name__ == "__main__":
    main()
