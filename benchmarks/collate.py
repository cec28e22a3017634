"""Time to build a batch from pre-tokenized pairs: afqmc-exp's ``PairCollator`` (split padded once, rows gathered)
against ``transformers.DataCollatorWithPadding`` (what HF's Trainer pads with), alternating arms, medians.

    python benchmarks/collate.py [--data ../shared/data/afqmc] [--rounds 5]

Both get the same AFQMC train pairs, tokenized once with MiniLM's tokenizer, and the same random batches of
16 (training) and 256 (evaluation) pairs, padded to a multiple of 8 as on a GPU.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "afqmc"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from transformers import AutoTokenizer, DataCollatorWithPadding

    from afqmc_exp.data import AfqmcData, PairCollator, encode_pairs
    from afqmc_exp.model import packaged_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    examples = AfqmcData(dir=args.data, score_test=False).load()["train"]
    split = encode_pairs(examples, tokenizer, 128)
    started = time.perf_counter()
    ours = PairCollator(split, tokenizer.pad_token_id, pad_to_multiple_of=8)
    table_ms = (time.perf_counter() - started) * 1000
    hf = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    rows = zip(split.input_ids, split.token_type_ids, split.labels.tolist(), strict=True)
    features = [{"input_ids": ids, "token_type_ids": types, "labels": label} for ids, types, label in rows]
    arms = {"hf": lambda batch: hf([features[i] for i in batch]), "ours": ours}
    rng = random.Random(0)
    print(f"{len(split)} pairs; PairCollator's table built in {table_ms:.1f} ms")
    for size, count in ((16, 500), (256, 50)):
        batches = [rng.sample(range(len(split)), size) for _ in range(count)]
        times = {name: [] for name in arms}
        for _ in range(args.rounds):
            for name, collate in arms.items():
                started = time.perf_counter()
                for batch in batches:
                    collate(batch)
                times[name].append((time.perf_counter() - started) / count * 1000)
        hf_ms, ours_ms = (statistics.median(times[name]) for name in ("hf", "ours"))
        print(f"batch {size:3d}: HF DataCollatorWithPadding {hf_ms:.3f} ms, PairCollator {ours_ms:.3f} ms "
              f"(x{hf_ms / ours_ms:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
