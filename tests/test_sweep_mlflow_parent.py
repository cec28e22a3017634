"""--multirun: every job its own MLflow run, nested under one parent run per sweep."""

import sys
from pathlib import Path

import pytest

from helpers import REPO, SHORT_RUN, broken_model, mlflow_runs, run_command

pytestmark = pytest.mark.slow


def multirun(tmp_path, afqmc_dir, *overrides):
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--multirun",
        *SHORT_RUN,
        "trainer.max_steps=3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    return run_command(cmd, cwd=tmp_path, timeout=900)


def split_runs(runs):
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return parent, children


def test_grid_jobs_nest_under_one_parent_that_summarises_them(tmp_path, afqmc_dir):
    proc = multirun(tmp_path, afqmc_dir, "optim.lr=1e-5,3e-5", "tracking.register_as=afqmc-sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = mlflow_runs(tmp_path, "afqmc")
    parent, children = split_runs(runs)
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("sweep 20")
    assert parent.info.run_name.endswith("· optim.lr×2")
    assert sorted(c.data.params["optim.lr"] for c in children) == ["1e-05", "3e-05"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["hydra.output_dir"] for c in children) == [
        str(tmp_path / "sweep" / "0"),
        str(tmp_path / "sweep" / "1"),
    ]
    best = max(children, key=lambda c: c.data.metrics["best/dev_accuracy"])
    assert parent.data.metrics["best/dev_accuracy"] == best.data.metrics["best/dev_accuracy"]
    assert parent.data.tags["sweep.best_run_id"] in {c.info.run_id for c in children}
    assert parent.data.tags["sweep.jobs"] == "2" and "optim.lr=1e-5,3e-5" in parent.data.tags["sweep.overrides"]

    # the parent explains the sweep: its best job linked, the report and the sweep's config as artifacts
    best_id = parent.data.tags["sweep.best_run_id"]
    assert f"/runs/{best_id})" in parent.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report", "multirun.yaml"} <= artifacts
    assert {"report/report.md", "report/runs.csv", "report/by_config.csv"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")
    }
    last = proc.stderr.strip().splitlines()[-1] + proc.stdout.strip().splitlines()[-1]
    assert "best job:" in proc.stdout + proc.stderr and f"afqmc-report parent={parent.info.run_id}" in last
    # the best job's registered version is the champion, and the parent's id fetches its weights
    champion = client.get_model_version_by_alias("afqmc-sweep", "champion")
    assert champion.run_id == best_id
    answer = run_command([sys.executable, str(REPO / "predict.py"), f"ckpt=runs:/{parent.info.run_id}/best_model",
                          "sentence1=how do I repay", "sentence2=how to repay"], cwd=tmp_path)  # fmt: skip
    assert answer.returncode == 0 and '"label"' in answer.stdout, answer.stderr[-2000:]
    best_name = client.get_run(best_id).info.run_name
    assert f"a sweep's parent: scoring its best job, {best_name} (run {best_id})" in answer.stderr
    version = client.get_model_version("afqmc-sweep", champion.version)  # the registry says what the version is
    assert version.tags["task"] == "afqmc" and version.tags["source_run"] == best_id
    assert version.tags["metric"] == "accuracy" and float(version.tags["dev_accuracy"]) >= 0
    assert version.description.startswith("afqmc: dev accuracy ") and best_id in version.description


def test_a_crashing_sweep_still_closes_its_parent_failed(tmp_path, afqmc_dir):
    from afqmc_exp.model import packaged_minilm_path

    # the first job fails inside its run (the weights cannot be loaded); the sweep goes on with the second
    broken = broken_model(tmp_path / "broken")
    proc = multirun(tmp_path, afqmc_dir, f"model.name_or_path={broken},{packaged_minilm_path()}")
    assert proc.returncode != 0
    _, runs = mlflow_runs(tmp_path, "afqmc")
    parent, children = split_runs(runs)
    assert parent.info.status == "FAILED"
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]
    assert parent.data.tags["sweep.failed_jobs"] == "1"


def test_a_k_fold_sweep_pools_out_of_fold_predictions_for_every_pair_once(tmp_path):
    from afqmc_exp.data.quickstart_sample import SAMPLE_DIR

    cmd = [sys.executable, str(REPO / "train.py"), "--multirun", *SHORT_RUN, f"data.dir={SAMPLE_DIR}",
           "data.folds=3", "data.fold=0,1,2", "data.dev_limit=null", "trainer.max_steps=3", "trainer.threshold=tune",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    proc = run_command(cmd, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = mlflow_runs(tmp_path, "afqmc")
    parent, children = split_runs(runs)
    pool = sum(1 for f in ("train.json", "dev.json") for line in (SAMPLE_DIR / f).read_text().splitlines() if line)
    assert parent.data.metrics["oof/pairs"] == pool  # every pair of train+dev predicted once, out of its fold
    assert 0 < parent.data.metrics["oof/threshold"] < 1 and "oof/f1" in parent.data.metrics
    assert parent.data.metrics["oof/f1_at_threshold"] >= parent.data.metrics["oof/f1"]
    assert {"folds/best_dev_accuracy_mean", "folds/best_dev_accuracy_std"} <= set(parent.data.metrics)
    assert "oof_predictions.jsonl" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    for child in children:  # each job tuned its threshold and keeps it with its weights
        meta = (Path(child.data.tags["hydra.output_dir"]) / "best_model" / "afqmc_exp.json").read_text()
        assert '"threshold"' in meta and "final/threshold" in child.data.metrics
