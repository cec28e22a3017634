"""Memory and start-up time against the size of the training file: ``train.py`` for 2 steps on MiniLM, cold (an
empty token cache) and warm (the cache the cold run left), beside the bare fast tokenizer on the same pairs.

    python benchmarks/data_scale.py [--sizes 48,30000,300000,1000000] [--data ../shared/data/afqmc]
        [--work /tmp/afqmc-data-scale] [--repeats 3] [--keep] [--predict-sizes 10000,100000]

For each size it writes a synthetic AFQMC-format training file (pairs of real AFQMC questions, drawn at random,
with random labels: real lengths and characters), then runs ``train.py`` on it with the shared dev file, once
with an empty cache and once more with the cache the first run wrote, each in a fresh process whose peak
resident memory is read from the kernel (``wait4``); the warm run is repeated (``--repeats``, median of each
figure), and a first run on the smallest file, not counted, warms the disk cache and Python's bytecode for
all. From each run's ``result.json``: how long the files
took to check (``data_check_s``) and to tokenize (``data_tokenize_s``; warm: to map from the cache), when the
model was loaded (``startup_model_s``) and when the first step came (``time_to_first_step_s``), counted from
the process's start. The bare tokenizer is the fast tokenizer's batch call (``tokenizer(a, b,
truncation=True, max_length=128)``, what HF examples and ``datasets.map`` call) on the same training and dev
pairs, in chunks of 10,000 (read beforehand, not timed), in a separate process. ``--predict-sizes`` also runs
``predict.py`` on files of those sizes (MiniLM trained for 2 steps) and reads its peak resident memory: it
streams, so that stays flat. The last line printed is one JSON object with every figure.
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
BARE = """
import json, sys, time
from transformers import AutoTokenizer
sys.path.insert(0, sys.argv[3])
from afqmc_exp.model import packaged_minilm_path
tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
seconds, pairs = 0.0, 0
for path in sys.argv[1:3]:
    with open(path, encoding="utf-8") as lines:
        while chunk := [json.loads(line) for _, line in zip(range(10000), lines)]:
            first, second = [r["sentence1"] for r in chunk], [r["sentence2"] for r in chunk]
            started = time.perf_counter()
            tokenizer(first, second, truncation=True, max_length=128)
            seconds += time.perf_counter() - started
            pairs += len(chunk)
print(json.dumps({"bare_tokenizer_s": seconds, "pairs": pairs}))
"""


def afqmc_sentences(data: Path) -> list[str]:
    """Every question of the shared AFQMC train and test files (read by path, never copied)."""
    sentences = set()
    for name in ("train.json", "test.json"):
        with open(data / name, encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                sentences.update((row["sentence1"], row["sentence2"]))
    return sorted(sentences)


def write_pairs(path: Path, n: int, sentences: list[str], seed: int) -> None:
    """``n`` pairs of AFQMC questions drawn at random, in AFQMC's JSON lines, ~31% labelled 1."""
    rng, quoted = random.Random(seed), [json.dumps(s, ensure_ascii=False) for s in sentences]
    with open(path, "w", encoding="utf-8") as out:
        for start in range(0, n, 100_000):
            size = min(100_000, n - start)
            firsts, seconds = rng.choices(quoted, k=size), rng.choices(quoted, k=size)
            labels = [int(rng.random() < 0.31) for _ in range(size)]
            out.write("".join(f'{{"sentence1": {a}, "sentence2": {b}, "label": "{y}"}}\n'
                              for a, b, y in zip(firsts, seconds, labels, strict=True)))  # fmt: skip


def run_and_measure(command: list[str], env: dict, cwd: Path) -> tuple[int, float, str]:
    """Exit status, peak RSS in GB (the kernel's maximum resident set size of the process) and stderr."""
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 2**20, stderr


def train_once(size_dir: Path, dev_file: Path, cache: Path, label: str) -> dict:
    out = size_dir / f"run-{label}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, str(REPO / "train.py"), "model=minilm", f"data.dir={size_dir}",
               f"data.dev_file={dev_file}", "data.test_file=null", "trainer.max_steps=2", "trainer.device=cpu",
               "trainer.progress_bar=false", "tracking.enabled=false", f"hydra.run.dir={out}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AFQMC_EXP_CACHE": str(cache)}
    status, peak_gb, stderr = run_and_measure(command, env, size_dir)
    if status != 0:
        raise SystemExit(f"train.py failed ({label}, {size_dir.name}):\n{stderr[-3000:]}")
    speed = json.loads((out / "result.json").read_text())["speed"]
    keys = ("data_check_s", "data_tokenize_s", "startup_model_s", "time_to_first_step_s")
    return {"peak_rss_gb": round(peak_gb, 3), **{k: round(speed[k], 2) for k in keys}}


def predict_memory(sizes: list[int], data: Path, work: Path, sentences: list[str]) -> dict:
    """Peak RSS and seconds of ``predict.py`` on files of each size, with MiniLM trained 2 steps on 48 pairs."""
    folder = work / "predict"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_pairs(folder / "train.json", 48, sentences, seed=0)
    train_once(folder, data / "dev.json", folder / "cache", "model")
    results = {}
    for size in sizes:
        pairs = folder / f"pairs-{size}.json"
        write_pairs(pairs, size, sentences, seed=size)
        command = [sys.executable, str(REPO / "predict.py"), f"ckpt={folder / 'run-model' / 'best_model'}",
                   f"file={pairs}", f"out={folder / f'predictions-{size}.jsonl'}", "device=cpu"]  # fmt: skip
        started = time.perf_counter()
        status, peak_gb, stderr = run_and_measure(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, folder)
        if status != 0:
            raise SystemExit(f"predict.py failed ({size}):\n{stderr[-3000:]}")
        results[size] = {"peak_rss_gb": round(peak_gb, 3), "seconds": round(time.perf_counter() - started, 1)}
        print(f"predict.py on {size:,} pairs: {json.dumps(results[size])}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return results


def bare_tokenizer(train_file: Path, dev_file: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", BARE, str(train_file), str(dev_file), str(REPO)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])["bare_tokenizer_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="48,30000,300000,1000000")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "afqmc"))
    parser.add_argument("--work", default="/tmp/afqmc-data-scale")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per size (their medians are reported)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files and caches")
    parser.add_argument("--predict-sizes", default="", help="also predict.py's peak RSS on files of these sizes")
    args = parser.parse_args()
    data, work = Path(args.data).resolve(), Path(args.work)
    sentences = afqmc_sentences(data)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    predicted = {}
    if args.predict_sizes:
        predicted = predict_memory([int(s) for s in args.predict_sizes.split(",")], data, work, sentences)
    results = {}
    if sizes:
        measure(min(sizes), data, work, sentences, repeats=1, keep=False)  # a warm-up, not reported
        results = {size: measure(size, data, work, sentences, args.repeats, args.keep) for size in sizes}
        print_table(results)
    print(json.dumps({"sizes": results, "predict": predicted}))


def measure(size: int, data: Path, work: Path, sentences: list[str], repeats: int, keep: bool) -> dict:
    """One size: the synthetic file written, a cold run, ``repeats`` warm runs (medians), the bare tokenizer."""
    size_dir, cache = work / str(size), work / str(size) / "cache"
    shutil.rmtree(size_dir, ignore_errors=True)
    size_dir.mkdir(parents=True)
    started = time.perf_counter()
    write_pairs(size_dir / "train.json", size, sentences, seed=size)
    print(f"{size:>10,} pairs: written in {time.perf_counter() - started:.1f} s "
          f"({(size_dir / 'train.json').stat().st_size / 2**20:.0f} MB)", flush=True)  # fmt: skip
    row = {"cold": train_once(size_dir, data / "dev.json", cache, "cold")}
    warm = [train_once(size_dir, data / "dev.json", cache, "warm") for _ in range(repeats)]
    row["warm"] = {key: statistics.median(run[key] for run in warm) for key in warm[0]}
    row["bare_tokenizer_s"] = round(bare_tokenizer(size_dir / "train.json", data / "dev.json"), 2)
    cold_data = row["cold"]["data_check_s"] + row["cold"]["data_tokenize_s"]
    row["cold_data_x_bare"] = round(cold_data / max(row["bare_tokenizer_s"], 1e-9), 2)
    print(f"{size:>10,} pairs: {json.dumps(row)}", flush=True)
    if not keep:
        shutil.rmtree(size_dir, ignore_errors=True)
    return row


def print_table(results: dict) -> None:
    base = results[min(results)]
    print("\n| pairs | peak RSS cold / warm (above the smallest) | check + tokenize cold (x bare tokenizer) | "
          "first step cold / warm (x smallest's warm) |")  # fmt: skip
    print("| --- | --- | --- | --- |")
    for size, row in results.items():
        cold, warm = row["cold"], row["warm"]
        above = [r["peak_rss_gb"] - base[k]["peak_rss_gb"] for k, r in (("cold", cold), ("warm", warm))]
        first_step = warm["time_to_first_step_s"] / base["warm"]["time_to_first_step_s"]
        print(f"| {size:,} | {cold['peak_rss_gb']:.2f} / {warm['peak_rss_gb']:.2f} GB (+{above[0]:.2f} / "
              f"+{above[1]:.2f}) | {cold['data_check_s']:.1f} + {cold['data_tokenize_s']:.1f} s "
              f"(x{row['cold_data_x_bare']:.2f}) | {cold['time_to_first_step_s']:.1f} / "
              f"{warm['time_to_first_step_s']:.1f} s (x{first_step:.2f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
