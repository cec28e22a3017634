#!/usr/bin/env bash
# The GPU measurements, as prepared scripts for a lent GPU machine (see DEVELOPERS.md and ../shared/gpu). A task
# gets ~15 minutes of GPU time in all and one command may run 10, so they come in two parts, by priority:
#   here:   bash ../shared/gpu/pack.sh                                        (writes .gpu/, carried along)
#   there:  source .gpu/setup.sh && OUT=$OUT bash benchmarks/gpu.sh speed      (~8 min; timeout_s=600)
#           source .gpu/setup.sh && OUT=$OUT bash benchmarks/gpu.sh checks     (~5 min; timeout_s=450)
# speed:  the side-by-side benchmark (BERT-base-sized, AFQMC, 300 steps, one pair): batch 16 with GPU busy for
#         every arm, then batch 64. Arms: the tutorial loop, HF Trainer, our defaults, reduce-overhead compiling,
#         bf16, and both. Every trial's line is in the log as it ends, so a cut-off run still tells what it got.
# checks: host syncs per step (defaults, and bf16 + compiled); what a checkpoint costs (every 100 steps, in
#         the background and written directly); the quickstart on the GPU in fp32, bf16 and compiled (dev
#         accuracy/F1, same seed as on CPU: a default may only change if they hold).
set -euo pipefail
OUT=${OUT:-/tmp/afqmc-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
bench="python3 benchmarks/throughput.py --device cuda --model /tmp/bert-base --data $AFQMC_DATA --steps 300 --pairs 1"
compiled="trainer.compile=reduce-overhead"
case "${1:-speed}" in
speed)
  $bench --batch-sizes 16 --variant "$compiled" --variant "trainer.mixed_precision=bf16" \
      --variant "trainer.mixed_precision=bf16 $compiled" 2>&1 | tee "$OUT/speed_batch16.log"
  $bench --batch-sizes 64 --no-gpu-busy --variant "trainer.mixed_precision=bf16" \
      --variant "trainer.mixed_precision=bf16 $compiled" 2>&1 | tee "$OUT/speed_batch64.log"
  ;;
checks)
  for set in "" "--set trainer.mixed_precision=bf16 --set $compiled"; do
    # shellcheck disable=SC2086  # $set is a list of arguments
    python3 benchmarks/host_syncs.py --model /tmp/bert-base --data "$AFQMC_DATA" --steps 30 --warm 10 $set 2>&1 \
        | tail -5 | tee -a "$OUT/host_syncs.log"
  done
  $bench --batch-sizes 16 --no-hf --no-gpu-busy --variant "trainer.checkpoint_every=100" \
      --variant "trainer.checkpoint_every=100 trainer.checkpoint_in_background=false" 2>&1 | tee "$OUT/checkpoints.log"
  for arm in fp32:trainer.mixed_precision=no bf16:trainer.mixed_precision=bf16 compiled:$compiled; do
    name=${arm%%:*}
    python3 train.py experiment=quickstart trainer.device=auto "${arm#*:}" tracking.uri=sqlite:///$OUT/mlflow.db \
        hydra.run.dir="$OUT/quickstart_$name" > "$OUT/quickstart_$name.log" 2>&1
    cp "$OUT/quickstart_$name/result.json" "$OUT/quickstart_$name.json"
  done
  grep -h '"final/dev_accuracy"\|"final/dev_f1"\|time_to_first' "$OUT"/quickstart_*.json
  ;;
*) echo "usage: OUT=DIR bash benchmarks/gpu.sh speed|checks" >&2; exit 2 ;;
esac
