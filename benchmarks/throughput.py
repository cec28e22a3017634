"""Side-by-side speed: the tutorial's training loop vs afqmc-exp's, same machine, model, data, batch, lr.

    python benchmarks/throughput.py --data ../shared/data/afqmc [--steps 40] [--batch-size 16]
                                    [--model minilm] [--pairs 3] [--variant trainer.mixed_precision=bf16]

Each trial is a fresh process, alternating tutorial/ours/tutorial/ours... so machine drift cancels; the
speedups are medians of the per-pair ratios. "ours" is ``python train.py`` itself (MLflow on, writing to
a temporary store), read back from the run's ``result.json``, so it measures exactly what users run.
The last line printed is one JSON object with every figure. ``--variant "OVERRIDES"`` (repeatable) adds
an arm: ``python train.py`` with those extra overrides, alternated with the others in every pair and
reported under ``variants`` with its own speedups over the tutorial.

MFU counts the standard model's FLOPs on the real (unpadded) tokens: 6 x non-embedding params per token
for a training step (2 for inference) plus attention's 12 x layers x hidden x seq (4 for inference),
over the matmul FLOP/s this script measures on this machine in the same run, in the precision that part
ran in (fp32; bf16 for our evaluation where ``trainer.eval_precision=auto`` picks it, and for training
with ``trainer.mixed_precision=bf16``: the table's "precision" column). As usual for MFU these
are the model's FLOPs, not the ones executed: work the loop avoids (padding, the last layer's non-[CLS]
positions) counts as done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def model_path(name: str) -> str:
    if name == "minilm":
        sys.path.insert(0, str(REPO))
        from afqmc_exp.model import packaged_minilm_path

        return packaged_minilm_path()
    return name


# ------------------------------------------------------------------------------------ the tutorial loop
def tutorial(args) -> dict:
    """The tutorial's loop, written out plainly: tokenize per batch with padding=True, shuffled
    DataLoader, BERT + dropout + linear on [CLS], AdamW + linear schedule, loss.item() every step."""
    import random

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)

    class AFQMC(Dataset):
        def __init__(self, path):
            self.data = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return self.data[i]

    checkpoint = model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def collate(batch):
        x = tokenizer(
            [b["sentence1"] for b in batch],
            [b["sentence2"] for b in batch],
            padding=True,
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
        )
        x["labels"] = torch.tensor([int(b["label"]) for b in batch])
        return x

    class BertClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = AutoModel.from_pretrained(checkpoint)
            self.dropout = nn.Dropout(0.1)
            self.classifier = nn.Linear(self.bert.config.hidden_size, 2)

        def forward(self, x):
            out = self.bert(
                input_ids=x["input_ids"], token_type_ids=x["token_type_ids"], attention_mask=x["attention_mask"]
            )
            return self.classifier(self.dropout(out.last_hidden_state[:, 0, :]))

    train_loader = DataLoader(
        AFQMC(Path(args.data) / "train.json"), batch_size=args.batch_size, shuffle=True, collate_fn=collate
    )
    dev_loader = DataLoader(
        AFQMC(Path(args.data) / "dev.json"), batch_size=args.batch_size, shuffle=False, collate_fn=collate
    )
    model = BertClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, args.steps)
    loss_fn = nn.CrossEntropyLoss()

    model.train()
    step, samples, started = 0, 0, time.perf_counter()
    while step < args.steps:
        for x in train_loader:
            loss = loss_fn(model(x), x["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss.item()
            step, samples = step + 1, samples + len(x["labels"])
            if step == args.steps:
                break
    train_s = time.perf_counter() - started

    model.eval()
    preds, labels, started = [], [], time.perf_counter()
    with torch.no_grad():
        for x in dev_loader:
            preds += model(x).argmax(-1).tolist()
            labels += x["labels"].tolist()
    eval_s = time.perf_counter() - started
    preds, labels = np.array(preds), np.array(labels)
    tp = int(((preds == 1) & (labels == 1)).sum())
    return {
        "train_samples_per_s": samples / train_s,
        "eval_samples_per_s": len(labels) / eval_s,
        "dev_accuracy": float((preds == labels).mean()),
        "dev_f1": 2 * tp / max(1, preds.sum() + labels.sum()),
        "samples": samples,
    }


# ----------------------------------------------------------------------------------------- our loop
def ours(args, store: str, overrides: list[str]) -> dict:
    """``python train.py`` with the same model, data, batch size, lr and number of samples (plus ``overrides``)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(REPO / "train.py"),
            f"model.name_or_path={model_path(args.model)}",
            "model.architecture=auto",
            f"data.dir={args.data}",
            f"data.batch_size={args.batch_size}",
            f"data.max_length={args.max_length}",
            "data.score_test=false",
            f"optim.lr={args.lr}",
            "scheduler.warmup_ratio=0.0",
            f"trainer.max_steps={args.steps}",
            f"trainer.log_every={args.steps}",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            f"seed={args.seed}",
            f"tracking.uri={store}",
            "tracking.experiment=benchmark",
            "tracking.log_weights=false",
            f"hydra.run.dir={tmp}/run",
            *overrides,
        ]
        result, rss = run_measured(cmd)
        speed = result["speed"]
        from mlflow import MlflowClient

        run = MlflowClient(store).get_run(result["mlflow_run_id"]).data  # the precisions it really ran in
        train_precision = "bf16" if run.params["trainer.mixed_precision"] == "bf16" else "fp32"
        return {
            "train_samples_per_s": speed["train_samples_per_s"],
            "eval_samples_per_s": speed["eval_samples_per_s"],
            "time_to_first_step_s": speed["time_to_first_step_s"],
            "dev_accuracy": result["final/dev_accuracy"],
            "dev_f1": result["final/dev_f1"],
            "samples": args.steps * args.batch_size,
            "peak_rss_mb": rss,
            "train_precision": train_precision,
            "eval_precision": "bf16" if "bf16" in (train_precision, run.tags["sys.eval_precision"]) else "fp32",
        }


def run_measured(cmd: list[str]) -> tuple[dict, float]:
    """Run a trial process; return what it reports and its peak RSS in MB."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out_dir = None
    for arg in cmd:
        if arg.startswith("hydra.run.dir="):
            out_dir = Path(arg.split("=", 1)[1])
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"trial failed: {' '.join(cmd)}\n{stderr[-3000:]}")
    rss = _child_peak_rss_mb()
    if out_dir is not None:
        return json.loads((out_dir / "result.json").read_text()), rss
    return json.loads(stdout.strip().splitlines()[-1]), rss


def _child_peak_rss_mb() -> float:
    # RUSAGE_CHILDREN is the largest of the waited-for children so far; trials are measured in
    # separate helper processes (see --trial) so each figure is one trial's own.
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------- figures
def matmul_flops(seconds: float = 2.0, n: int = 1024, dtype: str = "float32") -> float:
    """Achieved matmul FLOP/s with torch's default threads: the machine's practical peak for ``dtype``."""
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - started)


def model_shape(args) -> dict:
    """Non-embedding parameters, layers, hidden size and the mean real pair length of train/dev."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = model_path(args.model)
    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_config(config)
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    total = sum(p.numel() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(path)
    lengths = {}
    for split in ("train", "dev"):
        rows = [json.loads(line) for line in open(Path(args.data) / f"{split}.json", encoding="utf-8") if line.strip()]
        ids = tokenizer(
            [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], truncation=True, max_length=args.max_length
        )["input_ids"]
        lengths[split] = sum(map(len, ids)) / len(ids)
    return {
        "params": total,
        "non_embedding_params": total - embedding,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "train_tokens": lengths["train"],
        "dev_tokens": lengths["dev"],
    }


def flops_per_sample(shape: dict, tokens: float, training: bool) -> float:
    dense, attention = (6, 12) if training else (2, 4)
    return tokens * (dense * shape["non_embedding_params"] + attention * shape["layers"] * shape["hidden"] * tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "afqmc"))
    parser.add_argument("--model", default="minilm", help="minilm (offline) or a Hub id / local folder")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per trial")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pairs", type=int, default=3, help="tutorial/ours pairs, alternated")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help='another arm: train.py with these overrides, e.g. "trainer.mixed_precision=bf16"',
    )
    parser.add_argument("--trial", help=argparse.SUPPRESS)  # tutorial | ours | ours:<variant overrides>
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = str(Path(args.data).resolve())

    if args.trial:  # one measured trial in its own process, reported as JSON on stdout
        import resource

        if args.trial == "tutorial":
            figures = tutorial(args)
            figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        else:  # the peak of the train.py process, this trial's only child
            figures = ours(args, args.store, args.trial.partition(":")[2].split())
        print(json.dumps(figures))
        return

    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        sys.path.insert(0, str(REPO))
        from afqmc_exp.tracking import MlflowTracking

        MlflowTracking(uri=store, experiment="benchmark").start({}, {}).end()  # create the store once
        trials: dict[str, list[dict]] = {"tutorial": [], "ours": [], **{f"ours:{v}": [] for v in args.variant}}
        for pair in range(args.pairs):
            for kind in trials:
                cmd = [sys.executable, __file__, "--trial", kind, "--store", store] + [
                    f"--{k.replace('_', '-')}={v}"
                    for k, v in vars(args).items()
                    if k not in ("trial", "store", "pairs", "variant") and v is not None
                ]
                figures, _ = run_measured(cmd)
                trials[kind].append(figures)
                print(
                    f"pair {pair + 1}/{args.pairs} {kind[:34]:34s} train {figures['train_samples_per_s']:7.1f}/s  "
                    f"eval {figures['eval_samples_per_s']:7.1f}/s  dev acc {figures['dev_accuracy']:.4f} "
                    f"f1 {figures['dev_f1']:.4f}  rss {figures['peak_rss_mb']:.0f} MB",
                    flush=True,
                )

    peaks = {"fp32": matmul_flops(), "bf16": matmul_flops(dtype="bfloat16")}
    shape = model_shape(args)

    def median(kind, key):
        return statistics.median(t[key] for t in trials[kind])

    def speedup(kind, key):
        return statistics.median(o[key] / t[key] for t, o in zip(trials["tutorial"], trials[kind], strict=True))

    report = {
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "pairs": args.pairs,
        "threads": __import__("torch").get_num_threads(),
        "matmul_fp32_gflops": peaks["fp32"] / 1e9,
        "matmul_bf16_gflops": peaks["bf16"] / 1e9,
    }
    figures = {}
    for kind in trials:
        # MFU against the peak of the precision each part ran in (the tutorial: fp32)
        train_peak, eval_peak = (peaks[trials[kind][-1].get(f"{part}_precision", "fp32")] for part in ("train", "eval"))
        train_rate, eval_rate = median(kind, "train_samples_per_s"), median(kind, "eval_samples_per_s")
        figures[kind] = {
            "train_samples_per_s": train_rate,
            "eval_samples_per_s": eval_rate,
            "train_precision": trials[kind][-1].get("train_precision", "fp32"),
            "eval_precision": trials[kind][-1].get("eval_precision", "fp32"),
            "train_mfu": train_rate * flops_per_sample(shape, shape["train_tokens"], True) / train_peak,
            "eval_mfu": eval_rate * flops_per_sample(shape, shape["dev_tokens"], False) / eval_peak,
            "dev_accuracy": trials[kind][-1]["dev_accuracy"],
            "dev_f1": trials[kind][-1]["dev_f1"],
            "peak_rss_mb": max(t["peak_rss_mb"] for t in trials[kind]),
        }
        if kind != "tutorial":
            figures[kind].update(
                train_speedup=speedup(kind, "train_samples_per_s"),
                eval_speedup=speedup(kind, "eval_samples_per_s"),
                time_to_first_step_s=median(kind, "time_to_first_step_s"),
            )
    report["tutorial"], report["ours"] = figures.pop("tutorial"), figures.pop("ours")
    report["variants"] = {kind.partition(":")[2]: f for kind, f in figures.items()}
    for key in ("train_speedup", "eval_speedup", "time_to_first_step_s"):
        report[key] = report["ours"][key]
    report["mfu"] = report["ours"]["train_mfu"]

    print()
    print(
        f"{'':34s}{'precision':>10s}{'train/s':>9s}{'eval/s':>9s}{'x train':>9s}{'x eval':>8s}"
        f"{'train MFU':>11s}{'eval MFU':>10s}{'dev acc':>9s}{'dev F1':>8s}{'RSS MB':>8s}"
    )
    rows = {
        "tutorial": report["tutorial"],
        "ours": report["ours"],
        **{f"ours {v}": f for v, f in report["variants"].items()},
    }
    for name, r in rows.items():
        ratios = f"{r['train_speedup']:9.2f}{r['eval_speedup']:8.2f}" if "train_speedup" in r else f"{'':17s}"
        print(
            f"{name[:34]:34s}{r['train_precision'] + '/' + r['eval_precision']:>10s}"
            f"{r['train_samples_per_s']:9.1f}{r['eval_samples_per_s']:9.1f}{ratios}"
            f"{r['train_mfu']:11.1%}{r['eval_mfu']:10.1%}{r['dev_accuracy']:9.4f}{r['dev_f1']:8.4f}"
            f"{r['peak_rss_mb']:8.0f}"
        )
    print(
        f"train speedup x{report['train_speedup']:.2f}, eval speedup x{report['eval_speedup']:.2f}, "
        f"time to first step {report['time_to_first_step_s']:.1f} s (python train.py), matmul peak "
        f"fp32 {peaks['fp32'] / 1e9:.0f} / bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
