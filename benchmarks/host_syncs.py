"""Host syncs per training step on a GPU: a few steps of afqmc-exp's Trainer under
``torch.cuda.set_sync_debug_mode("warn")``, counting every call that made the CPU wait for the GPU between
two logged steps (there should be none: the CPU then queues kernels ahead of the GPU).

    python benchmarks/host_syncs.py --model /tmp/bert-base --data $AFQMC_DATA [--steps 20] \
        [--set trainer.mixed_precision=bf16 --set trainer.compile=reduce-overhead]

The test suite checks the same on CPU with a dispatch probe (``tests/test_trainer.py``); only CUDA also sees
synchronising copies (a blocking host-device copy), so this script is the check to run on a GPU. It
prints one line per synchronising call site and a last JSON line with the counts.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def trainer_for(args, output_dir: Path):
    import yaml

    from afqmc_exp.data import PairData
    from afqmc_exp.model import load_pair_classifier, prepare_for_device
    from afqmc_exp.run_folder import RunFolder
    from afqmc_exp.tracking.mlflow_run import NoRun
    from afqmc_exp.training.best_weights import BestWeights
    from afqmc_exp.training.checkpoint import Checkpointer
    from afqmc_exp.training.hardware import build_accelerator
    from afqmc_exp.training.optim import adamw, schedule
    from afqmc_exp.training.recipe import Recipe, TrainerConfig
    from afqmc_exp.training.trainer import Trainer

    options = {"max_steps": args.steps, "log_every": args.steps, "checkpoint_minutes": None, "progress_bar": False}
    model_options = {}
    for item in args.set:  # trainer.<key>=<value> or model.<key>=<value>
        group, _, key = item.partition("=")[0].partition(".")
        if group not in ("trainer", "model") or not key or "=" not in item:
            raise SystemExit(f"--set {item}: expected trainer.KEY=VALUE or model.KEY=VALUE")
        value = item.split("=", 1)[1]
        (model_options if group == "model" else options)[key] = yaml.safe_load(value)  # as Hydra reads it
    config = TrainerConfig(**options)
    data = PairData(dir=args.data, batch_size=args.batch_size, score_test=False)
    checked = data.check()
    accelerator = build_accelerator("auto", config.mixed_precision, config.tf32)
    pretrained = load_pair_classifier(args.model, labels=data.labels, **model_options)
    pretrained = prepare_for_device(pretrained, accelerator.device.type)
    splits = data.tokenize(pretrained.tokenizer, checked)
    recipe = Recipe(data=data, load_model=None, make_optimizer=partial(adamw), make_scheduler=partial(schedule),
                    trainer=config, seed=0).for_device(accelerator.device)  # fmt: skip
    folder, untracked = RunFolder(output_dir), NoRun()
    return Trainer(
        recipe=recipe, pretrained=pretrained, splits=splits, accelerator=accelerator,
        checkpointer=Checkpointer.of_run(folder, recipe.trainer, accelerator, before_save=untracked.flush),
        best=BestWeights.of_run(folder.best_model, pretrained, recipe.data, config.metric, 0, accelerator),
        metrics=untracked,
    )  # fmt: skip


def fit_watching(args, watch) -> None:
    """Trains ``args.steps`` steps, each batch after the first ``args.warm`` steps inside ``with watch():``."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for(args, Path(tmp))
        train_batch = trainer._train_batch

        def watched(batch):
            if trainer.state.step < args.warm:
                return train_batch(batch)
            with watch():
                return train_batch(batch)

        trainer._train_batch = watched
        trainer.fit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/tmp/bert-base")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "afqmc"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warm", type=int, default=5, help="steps before counting (first shapes, compiling)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], metavar="trainer.KEY=VALUE|model.KEY=VALUE")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("host_syncs.py needs a GPU; on CPU, run tests/test_trainer.py -k host_sync")
    sites, counted = collections.Counter(), [0]

    @contextlib.contextmanager
    def syncs_reported():
        counted[0] += 1
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for warning in caught:
            if "synchroniz" in str(warning.message):
                sites[f"{warning.filename}:{warning.lineno}"] += 1

    fit_watching(args, syncs_reported)
    for site, count in sites.most_common():
        print(f"{count:5d}  {site}")
    print(json.dumps({"batches_watched": counted[0], "host_syncs": sum(sites.values()), "sites": dict(sites),
                      "options": args.set}))  # fmt: skip


if __name__ == "__main__":
    main()
