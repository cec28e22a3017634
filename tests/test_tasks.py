"""Every task option trains end to end on a small sample in its official format; three classes are learned and
scored as scikit-learn scores them; extra dev sets; a sweep over tasks gives one report; configs saved before
there were tasks still resume."""

import json
import sys

import pytest

from helpers import REPO, compose, mlflow_runs, run_command, train
from helpers.tasks import NLI, write_task_files

pytestmark = pytest.mark.slow
TASKS = ["afqmc", "cmnli", "ocnli", "lcqmc", "bq", "pawsx", "chip_sts"]
RUN = ["model=minilm", "data.max_length=32", "trainer.device=cpu", "trainer.progress_bar=false",
       "tracking.log_weights=false"]  # fmt: skip


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("task", TASKS)
def test_each_task_trains_two_steps_on_its_official_files(tmp_path, task):
    folder = write_task_files(task, tmp_path / task)
    train([*RUN, f"data={task}", f"data.dir={folder}", "trainer.max_steps=2", "trainer.log_every=1"], tmp_path)
    run_dir = tmp_path / "run"
    result = json.loads((run_dir / "result.json").read_text())
    names = NLI if task in ("cmnli", "ocnli") else ["0", "1"]
    metric = "macro_f1" if task == "chip_sts" else "accuracy"
    assert result["metric"] == metric and f"final/dev_{metric}" in result
    dev = lines(run_dir / "dev_predictions.jsonl")
    assert all(row["label"] in names and list(row["probs"]) == names and row["gold"] in names for row in dev)
    assert len(dev) == 16  # the "-" line of the NLI samples is dropped
    test = lines(run_dir / "test_predictions.jsonl")
    assert len(test) == 8 and all(row["label"] in names for row in test)
    if task in ("bq", "pawsx"):  # labelled test files are scored
        assert f"final/test_{metric}" in result
    client, runs = mlflow_runs(tmp_path, task)  # each task its own experiment
    (run,) = runs
    assert f"-{task}-" in run.info.run_name and run.info.status == "FINISHED"
    files = sorted(p.name for p in folder.iterdir())
    assert sorted(d.dataset.name for d in run.inputs.dataset_inputs) == [f"{task}/{name}" for name in files]
    config = json.loads((run_dir / "best_model" / "config.json").read_text())
    assert list(config["id2label"].values()) == names


def test_three_classes_are_learned_and_scored_as_scikit_learn_scores_them(tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    folder = write_task_files("ocnli", tmp_path / "ocnli", n_train=480, n_dev=120)
    best = train([*RUN, "data=ocnli", f"data.dir={folder}", "data.batch_size=16", "optim.lr=1e-4",
                  "trainer.epochs=3", "data.test_file=null"], tmp_path)  # fmt: skip
    assert best > 0.6  # chance is 1/3: MiniLM reads these English pairs
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    dev = lines(tmp_path / "run" / "dev_predictions.jsonl")
    gold, guess = [row["gold"] for row in dev], [row["label"] for row in dev]
    assert result["final/dev_accuracy"] == pytest.approx(accuracy_score(gold, guess))
    assert result["final/dev_macro_f1"] == pytest.approx(f1_score(gold, guess, average="macro"))
    for name, value in zip(NLI, f1_score(gold, guess, average=None, labels=NLI), strict=True):
        assert result[f"final/dev_f1_{name}"] == pytest.approx(value)
    assert all(row["label"] == max(row["probs"], key=row["probs"].get) for row in dev)
    plots = {p.name for p in (tmp_path / "run" / "plots").iterdir()}  # one curve per label against the rest
    assert {"confusion_matrix.png", "pr_curve.png", "roc_curve.png"} <= plots
    # the weights answer with the task's labels everywhere: predict.py and evaluate.py read the task's files
    pair = ["sentence1=how do i close my wallet", "sentence2=i want to cancel my wallet"]
    said = run_command([sys.executable, REPO / "predict.py", f"ckpt={tmp_path / 'run' / 'best_model'}", *pair])
    answer = json.loads(said.stdout)
    assert said.returncode == 0 and answer["label"] in NLI and list(answer["probs"]) == NLI and "prob" not in answer
    scored = run_command([sys.executable, REPO / "evaluate.py", f"ckpt={tmp_path / 'run' / 'best_model'}",
                          f"file={folder / 'dev.json'}"])  # fmt: skip
    metrics = json.loads(scored.stdout)
    assert scored.returncode == 0 and metrics["n"] == 120
    assert metrics["accuracy"] == pytest.approx(result["final/dev_accuracy"], abs=1e-9)


def test_extra_dev_sets_are_scored_at_every_evaluation_and_the_best_is_chosen_on_dev(tmp_path):
    afqmc, lcqmc = write_task_files("afqmc", tmp_path / "afqmc"), write_task_files("lcqmc", tmp_path / "lcqmc")
    fields = "{text_a: 0, text_b: 1, label: 2}"
    extra = f"data.extra_dev={{lcqmc: {{file: {lcqmc / 'dev.tsv'}, format: tsv, fields: {fields}}}}}"
    train([*RUN, f"data.dir={afqmc}", extra, "trainer.max_steps=4", "trainer.eval_every=2", "data.test_file=null"],
          tmp_path)  # fmt: skip
    client, (run,) = mlflow_runs(tmp_path, "afqmc")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "dev_lcqmc/accuracy")]
    assert steps == [m.step for m in client.get_metric_history(run.info.run_id, "dev/accuracy")] == [2, 4]
    assert "final/dev_lcqmc_accuracy" in run.data.metrics and "best/dev_lcqmc_accuracy" not in run.data.metrics
    assert len(lines(tmp_path / "run" / "dev_lcqmc_predictions.jsonl")) == 16


def test_a_sweep_over_tasks_gives_one_comparable_report(tmp_path):
    for task in ("afqmc", "lcqmc", "bq"):
        write_task_files(task, tmp_path / "data" / task)
    proc = run_command([sys.executable, REPO / "train.py", "--multirun", "data=afqmc,lcqmc,bq",
                        f"data.dir={tmp_path / 'data'}/${{data.name}}", *RUN, "trainer.max_steps=2",
                        "data.test_file=null", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent = (tmp_path / "sweep" / "mlflow_parent_run_id").read_text().strip()
    store = f"uri=sqlite:///{tmp_path / 'mlflow.db'}"
    report = run_command([sys.executable, "-m", "afqmc_exp", "report", f"parent={parent}", store,
                          f"out={tmp_path / 'report'}"], cwd=tmp_path)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    runs = (tmp_path / "report" / "runs.csv").read_text().splitlines()
    header = runs[0].split(",")
    tasks = [row.split(",")[header.index("task")] for row in runs[1:]]
    assert sorted(tasks) == ["afqmc", "bq", "lcqmc"]
    pooled = (tmp_path / "report" / "by_config.csv").read_text()
    assert "data=afqmc" in pooled and "data=bq" in pooled and "data.dir" not in pooled and "data.format" not in pooled


def test_a_run_saved_with_the_old_data_target_resumes_with_its_saved_config(tmp_path):
    """Saved .hydra/config.yaml files of earlier runs name afqmc_exp.data.AfqmcData with its old keys only."""
    from omegaconf import OmegaConf

    afqmc = write_task_files("afqmc", tmp_path / "afqmc")
    cfg = compose([*RUN, f"data.dir={afqmc}", "trainer.max_steps=2", "data.test_file=null",
                   f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    old = OmegaConf.to_container(cfg, resolve=True)
    for key in ("name", "format", "fields", "labels", "drop_labels", "metric", "extra_dev", "archive_url", "_convert_"):
        old["data"].pop(key)
    old["data"]["_target_"], old["trainer"]["metric"] = "afqmc_exp.data.AfqmcData", "f1"
    folder = tmp_path / "earlier"
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(old), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"model": "minilm", "data": "afqmc"}}}}),
                   folder / ".hydra" / "hydra.yaml")  # fmt: skip
    train([f"resume={folder}"], tmp_path)  # killed before its MLflow run opened: it starts over, in its folder
    result = json.loads((folder / "result.json").read_text())
    assert result["metric"] == "f1" and "final/dev_f1" in result and result["steps"] == 2
    _, (run,) = mlflow_runs(tmp_path, "afqmc")  # named and tagged after its own options, not the command's defaults
    assert (
        run.info.run_name.startswith("minilm-afqmc-")
        and json.loads(run.data.tags["hydra.choices"])["model"] == "minilm"
    )
