"""Time to build a batch from pre-tokenized pairs: afqmc-exp's ``PairCollator`` (rows gathered from the token
cache's flat arrays) against ``transformers.DataCollatorWithPadding`` (what HF's Trainer pads with), alternating
arms, medians.

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

    from afqmc_exp.data import PairCollator, PairData
    from afqmc_exp.model import packaged_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    split = PairData(dir=args.data, score_test=False).load(tokenizer)["train"]
    started = time.perf_counter()
    ours = PairCollator(split, tokenizer.pad_token_id, pad_to_multiple_of=8)
    setup_ms = (time.perf_counter() - started) * 1000
    hf = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    tokens, labels = split.sources[0].tokens, split.labels.tolist()
    bounds = zip(tokens.offsets[:-1], tokens.offsets[1:], strict=True)
    features = [{"input_ids": tokens.ids[a:b].tolist(), "token_type_ids": tokens.type_ids[a:b].tolist(),
                 "labels": label} for (a, b), label in zip(bounds, labels, strict=True)]  # fmt: skip
    arms = {"hf": lambda batch: hf([features[i] for i in batch]), "ours": ours}
    rng = random.Random(0)
    print(f"{len(split)} pairs; PairCollator set up in {setup_ms:.1f} ms")
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
