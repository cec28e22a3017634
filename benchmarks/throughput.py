"""Side-by-side speed: the tutorial's training loop, Hugging Face's Trainer and afqmc-exp, on one machine,
with the same model, data, batch size, learning rate and number of samples.

    python benchmarks/throughput.py --data ../shared/data/afqmc                       # CPU, batch 16
    python benchmarks/throughput.py --device cuda --model /tmp/bert-base             # GPU, batches 16 and 64
        [--steps N] [--batch-sizes 16,64] [--pairs 3] [--variant "trainer.compile=reduce-overhead"] [--hf]

Arms, each trial a fresh process, alternated tutorial/HF/ours/variants... within every pair so that
machine drift cancels; speed-ups are medians of the per-pair ratios:

* ``tutorial``: the tutorial's loop as it is written for that device (per-batch tokenization with
  ``padding=True``, a shuffled DataLoader, BERT + dropout + linear on [CLS], AdamW + linear schedule,
  ``loss.item()`` every step, ``.to(device)``, fp32);
* ``hf`` (on by default with ``--device cuda``, ``--hf`` elsewhere): ``transformers.Trainer`` in bf16 with
  length-grouped sampling, what a user would pick instead;
* ``ours``: ``python train.py`` itself with its defaults (MLflow on, into a temporary store), read back from
  the run's ``result.json``: exactly what users run; ``--variant OVERRIDES`` adds arms with extra overrides.

Reported per arm: training and evaluation samples/s and their ratios to the tutorial and to HF, time from
process start to the first optimizer step, dev accuracy/F1, peak host memory (CPU) or peak GPU memory, MFU
and, on a GPU, how busy the GPU is. **MFU** counts the standard model's FLOPs on the real (unpadded)
tokens (6 x non-embedding params per token for a training step, 2 for inference, plus attention's
12 x layers x hidden x length, 4 for inference) over the matmul FLOP/s this script measures on this
machine in the same run, in the precision that part ran in (fp32, TF32 or bf16). Work a loop avoids
(padding, the [CLS]-only layer) counts as done. **GPU busy** is the GPU's kernel time over the wall time
of a few profiled training steps, taken after ``--busy-skip`` warm steps in a separate process per arm
(the profiler slows the CPU side, so it is a lower bound). The last line printed is one JSON object with
every figure.
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


def read_split(args, split: str) -> list[dict]:
    with open(Path(args.data) / f"{split}.json", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def seconds_since_process_start() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


def dev_scores(preds, labels) -> dict:
    import numpy as np

    preds, labels = np.asarray(preds), np.asarray(labels)
    true_pos = int(((preds == 1) & (labels == 1)).sum())
    return {
        "dev_accuracy": float((preds == labels).mean()),
        "dev_f1": 2 * true_pos / max(1, int(preds.sum() + labels.sum())),
    }


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def gpu_busy(step, steps: int) -> float:
    """Kernel time over wall time of ``steps`` calls of ``step`` under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(REPO))
    from afqmc_exp.training.profiling import device_seconds

    synchronize("cuda" if torch.cuda.is_available() else "cpu")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize("cuda" if torch.cuda.is_available() else "cpu")
        wall = time.perf_counter() - started
    return device_seconds(prof) / wall


# ------------------------------------------------------------------------------------ the tutorial loop
def tutorial(args) -> dict:
    """The tutorial's loop, written out plainly for ``args.device``."""
    import random

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    checkpoint, device = model_path(args.model), torch.device(args.device)
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

    train_loader = DataLoader(read_split(args, "train"), batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    dev_loader = DataLoader(read_split(args, "dev"), batch_size=args.batch_size, shuffle=False, collate_fn=collate)
    model = BertClassifier().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, args.steps)
    loss_fn = nn.CrossEntropyLoss()
    batches = (batch for _ in iter(int, 1) for batch in train_loader)  # epoch after epoch

    def step() -> int:
        x = {k: v.to(device) for k, v in next(batches).items()}
        loss = loss_fn(model(x), x["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss.item()
        return len(x["labels"])

    model.train()
    if args.busy:
        for _ in range(args.busy_skip):
            step()
        return {"gpu_busy": gpu_busy(step, args.busy_steps)}
    started = time.perf_counter()
    samples = step()
    first_step_s = seconds_since_process_start()
    for _ in range(args.steps - 1):
        samples += step()
    synchronize(args.device)
    train_s = time.perf_counter() - started

    model.eval()
    preds, labels, started = [], [], time.perf_counter()
    with torch.no_grad():
        for x in dev_loader:
            x = {k: v.to(device) for k, v in x.items()}
            preds += model(x).argmax(-1).tolist()
            labels += x["labels"].tolist()
    eval_s = time.perf_counter() - started
    return {
        "train_samples_per_s": samples / train_s,
        "eval_samples_per_s": len(labels) / eval_s,
        "time_to_first_step_s": first_step_s,
        **dev_scores(preds, labels),
        **gpu_memory(args.device),
    }


def gpu_memory(device: str) -> dict:
    if device != "cuda":
        return {}
    import torch

    return {"peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30}


# ------------------------------------------------------------------------------------ HF Trainer
def hf_trainer(args) -> dict:
    """``transformers.Trainer``: bf16, length-grouped sampling, the same batch, lr, steps and schedule."""
    import dataclasses

    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    checkpoint = model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def encode(split):
        rows = read_split(args, split)
        enc = tokenizer(
            [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], truncation=True, max_length=args.max_length
        )
        return [{**{k: enc[k][i] for k in enc}, "labels": int(r["label"])} for i, r in enumerate(rows)]

    stop_at = args.busy_skip + args.busy_steps if args.busy else args.steps

    class Clock(TrainerCallback):
        """Times the training steps as the other arms do, and profiles the last ones in a busy trial."""

        first_step_s = started = ended = profiler = None

        def on_step_begin(self, targs, state, control, **kwargs):
            if state.global_step == 0:
                self.started = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step == 1:
                self.first_step_s = seconds_since_process_start()
            if args.busy and state.global_step == args.busy_skip:
                self.begin_profile()
            if state.global_step == stop_at:
                synchronize(args.device)
                self.ended = time.perf_counter()

        def begin_profile(self):
            from torch.profiler import ProfilerActivity, profile

            synchronize(args.device)
            self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.profiler.start()
            self.profile_started = time.perf_counter()

    options = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        max_steps=stop_at,
        lr_scheduler_type="linear",
        bf16=True,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        use_cpu=args.device == "cpu",
    )
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "group_by_length" in fields:  # older transformers; newer ones name a sampling strategy
        options["group_by_length"] = True
    elif "train_sampling_strategy" in fields:
        options["train_sampling_strategy"] = "group_by_length"
    clock = Clock()
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**options),
        train_dataset=encode("train"),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[clock],
    )
    trainer.train()
    if args.busy:
        sys.path.insert(0, str(REPO))
        from afqmc_exp.training.profiling import device_seconds

        clock.profiler.stop()
        return {"gpu_busy": device_seconds(clock.profiler) / (clock.ended - clock.profile_started)}
    dev = encode("dev")
    started = time.perf_counter()
    out = trainer.predict(dev)
    eval_s = time.perf_counter() - started
    return {
        "train_samples_per_s": args.steps * args.batch_size / (clock.ended - clock.started),
        "eval_samples_per_s": len(dev) / eval_s,
        "time_to_first_step_s": clock.first_step_s,
        **dev_scores(np.argmax(out.predictions, -1), [r["labels"] for r in dev]),
        **gpu_memory(args.device),
    }


# ----------------------------------------------------------------------------------------- our loop
def ours(args, store: str, overrides: list[str]) -> dict:
    """``python train.py`` with the same model, data, batch size, lr and number of samples (plus ``overrides``)."""
    with tempfile.TemporaryDirectory() as tmp:
        steps = args.busy_skip + 2 + args.busy_steps if args.busy else args.steps
        profile = [f"trainer.profile_steps={args.busy_steps}", f"trainer.profile_skip={args.busy_skip}"]
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
            f"trainer.max_steps={steps}",
            f"trainer.log_every={steps}",
            f"trainer.device={args.device if args.device == 'cpu' else 'auto'}",
            "trainer.progress_bar=false",
            f"seed={args.seed}",
            f"tracking.uri={store}",
            "tracking.experiment=benchmark",
            "tracking.log_weights=false",
            f"hydra.run.dir={tmp}/run",
            *(profile if args.busy else []),
            *overrides,
        ]
        result, rss = run_measured(cmd)
        if args.busy:
            return {
                "gpu_busy": json.loads((Path(tmp) / "run" / "profile" / "summary.json").read_text()).get(
                    "gpu_busy", 0.0
                )
            }
        from mlflow import MlflowClient

        run = MlflowClient(store).get_run(result["mlflow_run_id"]).data  # the precisions it really ran in
        speed = result["speed"]
        return {
            "train_samples_per_s": speed["train_samples_per_s"],
            "eval_samples_per_s": speed["eval_samples_per_s"],
            "time_to_first_step_s": speed["time_to_first_step_s"],
            **{k: v for k, v in speed.items() if k.startswith("startup_")},  # where that wait went
            "dev_accuracy": result["final/dev_accuracy"],
            "dev_f1": result["final/dev_f1"],
            "peak_rss_mb": rss,
            **({"peak_gpu_memory_gb": speed["peak_gpu_memory_gb"]} if "peak_gpu_memory_gb" in speed else {}),
            **precisions(run, args.device),
        }


def precisions(run, device: str) -> dict:
    params = run.params
    train = "bf16" if params["trainer.mixed_precision"] == "bf16" else "fp32"
    if train == "fp32" and device == "cuda" and params.get("trainer.tf32") == "true":
        train = "tf32"
    return {"train_precision": train, "eval_precision": "bf16" if run.tags["sys.eval_precision"] == "bf16" else train}


def run_measured(cmd: list[str]) -> tuple[dict, float]:
    """Run a trial process; return what it reports and its peak RSS in MB."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out_dir = next((Path(a.split("=", 1)[1]) for a in cmd if a.startswith("hydra.run.dir=")), None)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"trial failed: {' '.join(cmd)}\n{stderr[-3000:]}")
    import resource

    # RUSAGE_CHILDREN is the largest of the waited-for children so far; each trial runs in its own helper
    # process (see --trial), so the figure is that trial's own
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if out_dir is not None and (out_dir / "result.json").exists():
        return json.loads((out_dir / "result.json").read_text()), rss
    return json.loads(stdout.strip().splitlines()[-1]), rss


# ------------------------------------------------------------------------------------------- figures
def matmul_flops(device: str, precision: str, seconds: float = 2.0) -> float:
    """Achieved matmul FLOP/s on ``device`` in ``precision`` (fp32, tf32, bf16): the practical peak."""
    import torch

    n = 8192 if device == "cuda" else 1024
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        for _ in range(3):
            a @ b
        synchronize(device)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
            if device == "cuda" and count % 10 == 0:
                synchronize(device)
        synchronize(device)
        return 2 * n**3 * count / (time.perf_counter() - started)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


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
        rows = read_split(args, split)
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


ARM_PRECISIONS = {"tutorial": ("fp32", "fp32"), "hf": ("bf16", "bf16")}


def summarise(trials: dict, busy: dict, peaks: dict, shape: dict) -> dict:
    """Medians per arm, MFU, and every arm's ratios to the tutorial and to HF (medians of per-pair ratios)."""

    def median(kind, key):
        return statistics.median(t[key] for t in trials[kind])

    def ratio(kind, base, key):
        return statistics.median(o[key] / t[key] for t, o in zip(trials[base], trials[kind], strict=True))

    figures = {}
    for kind, runs in trials.items():
        train_p, eval_p = ARM_PRECISIONS.get(kind) or (runs[-1]["train_precision"], runs[-1]["eval_precision"])
        train_rate, eval_rate = median(kind, "train_samples_per_s"), median(kind, "eval_samples_per_s")
        row = {
            "train_samples_per_s": train_rate,
            "eval_samples_per_s": eval_rate,
            "precision": f"{train_p}/{eval_p}",
            "train_mfu": train_rate * flops_per_sample(shape, shape["train_tokens"], True) / peaks[train_p],
            "eval_mfu": eval_rate * flops_per_sample(shape, shape["dev_tokens"], False) / peaks[eval_p],
            "time_to_first_step_s": median(kind, "time_to_first_step_s"),
            "dev_accuracy": runs[-1]["dev_accuracy"],
            "dev_f1": runs[-1]["dev_f1"],
            "peak_rss_mb": max(t.get("peak_rss_mb", 0) for t in runs),
            "peak_gpu_memory_gb": max(t.get("peak_gpu_memory_gb", 0) for t in runs),
            "gpu_busy": busy.get(kind),
            **{k: median(kind, k) for k in runs[-1] if k.startswith("startup_")},
        }
        for base in ("tutorial", "hf"):
            if base in trials and kind != base:
                row[f"train_x_{base}"] = ratio(kind, base, "train_samples_per_s")
                row[f"eval_x_{base}"] = ratio(kind, base, "eval_samples_per_s")
        figures[kind] = row
    return figures


def print_table(batch_size: int, figures: dict) -> None:
    print(f"\nbatch {batch_size}")
    header = f"{'':34s}{'precision':>10s}{'train/s':>9s}{'eval/s':>9s}{'x tut':>7s}{'x tut':>7s}"
    header += (
        f"{'x HF':>7s}{'x HF':>7s}{'MFU tr':>8s}{'MFU ev':>8s}{'busy':>6s}{'1st s':>7s}{'acc':>7s}{'F1':>7s}{'mem':>9s}"
    )
    print(header + "\n" + f"{'':52s}{'train':>7s}{'eval':>7s}{'train':>7s}{'eval':>7s}")
    for kind, r in figures.items():
        cells = [r.get(k) for k in ("train_x_tutorial", "eval_x_tutorial", "train_x_hf", "eval_x_hf")]
        ratios = "".join(f"{c:7.2f}" if c is not None else f"{'':7s}" for c in cells)
        busy = f"{r['gpu_busy']:6.0%}" if r["gpu_busy"] is not None else f"{'':6s}"
        memory = f"{r['peak_gpu_memory_gb']:6.1f} GB" if r["peak_gpu_memory_gb"] else f"{r['peak_rss_mb']:6.0f} MB"
        print(
            f"{kind[:34]:34s}{r['precision']:>10s}{r['train_samples_per_s']:9.1f}{r['eval_samples_per_s']:9.1f}{ratios}"
            f"{r['train_mfu']:8.1%}{r['eval_mfu']:8.1%}{busy}{r['time_to_first_step_s']:7.1f}"
            f"{r['dev_accuracy']:7.3f}{r['dev_f1']:7.3f}{memory}"
        )
    for kind, r in figures.items():  # seconds since the process started, at each milestone before the first step
        if "startup_model_s" in r:
            print(f"{kind[:34]:34s} startup: data read {r['startup_data_s']:.1f} s, tracking open "
                  f"{r['startup_tracking_s']:.1f} s, model and tokens {r['startup_model_s']:.1f} s, first step "
                  f"{r['time_to_first_step_s']:.1f} s")  # fmt: skip


def trial(args, kind: str, store: str, batch_size: int, busy: bool = False) -> dict:
    """One measured trial of ``kind`` in its own process."""
    forwarded = {
        k: v
        for k, v in vars(args).items()
        if k not in ("trial", "store", "pairs", "variant", "batch_sizes", "hf", "gpu_busy")
    }
    forwarded.update(batch_size=batch_size, busy=busy)
    cmd = [sys.executable, __file__, "--trial", kind, "--store", store]
    for key, value in forwarded.items():
        if value is True:
            cmd.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            cmd.append(f"--{key.replace('_', '-')}={value}")
    figures, _ = run_measured(cmd)
    return figures


def run_trial_here(args) -> None:
    """``--trial KIND``: measure one arm in this process and print its figures as JSON."""
    import resource

    if args.trial == "tutorial":
        figures = tutorial(args)
    elif args.trial == "hf":
        figures = hf_trainer(args)
    else:  # ours: the peak is the train.py process's, this trial's only child
        figures = ours(args, args.store, args.trial.partition(":")[2].split())
    if args.trial in ("tutorial", "hf"):
        figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "afqmc"))
    parser.add_argument("--model", default="minilm", help="minilm (offline) or a Hub id / local folder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, help="optimizer steps per trial (default: 40 on cpu, 300 on cuda)")
    parser.add_argument("--batch-sizes", help="comma-separated (default: 16 on cpu, 16,64 on cuda)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of alternated trials")
    parser.add_argument("--hf", action=argparse.BooleanOptionalAction, help="the HF Trainer arm (default: on cuda)")
    parser.add_argument(
        "--gpu-busy", action=argparse.BooleanOptionalAction, help="measure GPU busy per arm (default: on cuda)"
    )
    parser.add_argument("--busy-steps", type=int, default=10, help="profiled steps per arm for GPU busy (cuda)")
    parser.add_argument("--busy-skip", type=int, default=50, help="warm steps before those")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help='another arm: train.py with these overrides, e.g. "trainer.mixed_precision=bf16"',
    )
    parser.add_argument("--trial", help=argparse.SUPPRESS)  # tutorial | hf | ours | ours:<variant overrides>
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = str(Path(args.data).resolve())
    cuda = args.device == "cuda"
    args.steps = args.steps or (300 if cuda else 40)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("16,64" if cuda else "16")).split(",")]
    args.hf = cuda if args.hf is None else args.hf
    args.gpu_busy = cuda if args.gpu_busy is None else args.gpu_busy and cuda
    return args


def environment(args) -> dict:
    import torch
    import transformers

    device = torch.cuda.get_device_name() if args.device == "cuda" else (os.uname().machine + " CPU")
    return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.trial:
        return run_trial_here(args)
    kinds = ["tutorial", *(["hf"] if args.hf else []), "ours", *(f"ours:{v}" for v in args.variant)]
    report = {"model": args.model, "steps": args.steps, "pairs": args.pairs, **environment(args), "batches": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        sys.path.insert(0, str(REPO))
        from afqmc_exp.tracking.mlflow_tracking import MlflowTracking

        MlflowTracking(uri=store, experiment="benchmark").start({}, {}, Path(tmp)).end()  # create the store once
        results = {}
        for batch_size in args.batch_sizes:
            trials = {kind: [] for kind in kinds}
            for pair in range(args.pairs):
                for kind in kinds:
                    figures = trial(args, kind, store, batch_size)
                    trials[kind].append(figures)
                    print(
                        f"batch {batch_size} pair {pair + 1}/{args.pairs} {kind[:34]:34s} "
                        f"train {figures['train_samples_per_s']:8.1f}/s  eval {figures['eval_samples_per_s']:8.1f}/s  "
                        f"dev acc {figures['dev_accuracy']:.4f} f1 {figures['dev_f1']:.4f}",
                        flush=True,
                    )
            busy = (
                {kind: trial(args, kind, store, batch_size, busy=True)["gpu_busy"] for kind in kinds}
                if args.gpu_busy
                else {}
            )
            results[batch_size] = (trials, busy)
    precisions_used = {"fp32", "bf16"} | ({"tf32"} if args.device == "cuda" else set())
    peaks = {p: matmul_flops(args.device, p) for p in sorted(precisions_used)}
    report["matmul_gflops"] = {p: v / 1e9 for p, v in peaks.items()}
    shape = model_shape(args)
    for batch_size, (trials, busy) in results.items():
        figures = summarise(trials, busy, peaks, shape)
        print_table(batch_size, figures)
        report["batches"][str(batch_size)] = figures
    print("\nmatmul peak " + ", ".join(f"{p} {v:.0f}" for p, v in report["matmul_gflops"].items()) + " GFLOP/s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
