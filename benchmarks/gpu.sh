#!/usr/bin/env bash
# The GPU measurements, as one prepared script for a lent GPU machine (see DEVELOPERS.md and ../shared/gpu):
#   here:      bash ../shared/gpu/pack.sh                      (writes .gpu/, carried with the working tree)
#   there:     source .gpu/setup.sh && OUT=$OUT bash benchmarks/gpu.sh [quick]
# Writes into $OUT: benchmark.log (the side-by-side table and its JSON line) and quickstart_{fp32,bf16}.json
# (dev accuracy/F1 of the quickstart trained on the GPU, same seed as on CPU). "quick": one pair, batch 16.
set -euo pipefail
OUT=${OUT:-/tmp/afqmc-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
pairs=2; batches=16,64
[ "${1:-}" = quick ] && pairs=1 && batches=16
python3 benchmarks/throughput.py --device cuda --model /tmp/bert-base --data "$AFQMC_DATA" --steps 300 \
    --pairs "$pairs" --batch-sizes "$batches" --variant "trainer.compile=reduce-overhead" 2>&1 | tee "$OUT/benchmark.log"
for precision in no bf16; do
  python3 train.py experiment=quickstart trainer.device=auto trainer.mixed_precision=$precision \
      tracking.uri=sqlite:///$OUT/mlflow.db hydra.run.dir="$OUT/quickstart_$precision" > "$OUT/quickstart_$precision.log" 2>&1
  cp "$OUT/quickstart_$precision/result.json" "$OUT/quickstart_$precision.json"
done
grep -h '"final/dev_accuracy"\|"final/dev_f1"' "$OUT"/quickstart_*.json
