"""Operations dispatched per training step, counted on any machine: on a GPU each one is (about) a kernel
launch queued by Python, and at batch 16 a BERT-base step is bound by those launches, not by the GPU's
arithmetic (the GPU computed 5.3 ms of a ~60 ms bf16 step in the H200 profile of issue 14). So this count,
taken on a CPU, says how a change moves the host's share of a GPU step without a GPU.

    python benchmarks/ops_per_step.py [--variant "trainer.mixed_precision=bf16"] ...

Each arm is a few steps of afqmc-exp's ``Trainer`` in a fresh process (Accelerate's precision is per process)
on a BERT-base-deep model (12 layers, random init, 64 wide so that it runs in seconds: the count depends on
the depth, not the width), with the [CLS]-only last layer off as on a GPU, counting every ATen operation
but views (they launch nothing) during the steps after ``--warm``. Printed per arm: operations per step,
how many of them are dtype casts (``_to_copy``) and host reads (``.item()`` and the like). On a CPU the
attention in training mode runs as ~6 operations per layer where CUDA runs one kernel, and foreach
operations launch a few kernels each on CUDA: the count is a proxy, compared between arms of one run.
Compiled steps cannot be counted this way (Dynamo runs eager code under a dispatch mode).
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
HOST_READS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.item", "aten.nonzero")


def write_model(folder: Path) -> None:
    """A random-init BERT-base-deep classifier (12 layers, hidden 64) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from afqmc_exp.model import packaged_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=12,
                        num_attention_heads=4, intermediate_size=256, num_labels=2)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def count_arm(args) -> dict:
    """Counts in this process: the trainer's steps after ``args.warm``, one Counter per step."""
    from host_syncs import fit_watching
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.ops[str(func).rsplit(".", 1)[0]] += 1
            return func(*args, **(kwargs or {}))

    steps = []

    def counting():
        mode = Counting()
        steps.append(mode.ops)
        return mode

    fit_watching(args, counting)
    per_step = [sum(ops.values()) for ops in steps]
    last = steps[-1]
    return {
        "ops_per_step": max(per_step),
        "casts": last["aten._to_copy"],
        "host_reads": sum(last[name] for name in HOST_READS),
        "most_common": last.most_common(8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "afqmc"))
    parser.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                        help="an arm: space-separated trainer.KEY=VALUE / model.KEY=VALUE (repeatable)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warm", type=int, default=3, help="steps before counting (first shapes)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", help=argparse.SUPPRESS)  # set for --arm
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # count one arm in this process
    args = parser.parse_args()
    if args.arm is not None:
        args.set = ["model.cls_only_last_layer=false", *shlex.split(args.arm)]
        print(json.dumps(count_arm(args)))
        return

    arms = ["", "trainer.mixed_precision=bf16", *args.variant]
    if any("trainer.compile=" in arm and "trainer.compile=no" not in arm for arm in arms):
        parser.error("compiled steps cannot be counted: Dynamo runs eager code under the counting dispatch mode")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp))
        for arm in arms:
            cmd = [sys.executable, __file__, "--arm", arm, "--model", tmp, "--data", args.data, "--steps",
                   str(args.steps), "--warm", str(args.warm), "--batch-size", str(args.batch_size)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"arm {arm or 'defaults'!r} failed:\n{proc.stderr[-3000:]}")
            results[arm or "defaults"] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results["defaults"]["ops_per_step"]
    print(f"{'arm':40s} {'ops/step':>9s} {'x defaults':>10s} {'casts':>6s} {'host reads':>10s}")
    for name, figures in results.items():
        print(f"{name:40s} {figures['ops_per_step']:9d} {figures['ops_per_step'] / base:10.2f} "
              f"{figures['casts']:6d} {figures['host_reads']:10d}")  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
