"""What a finished run writes into its folder (``training/outputs.py``), in-process: the dev plots, a predictions file
per scored split (dev's with its pairs and gold labels), and result.json last, so a folder holding a result.json
holds every other output too."""

import json

import numpy as np
import pytest

from afqmc_exp.run_folder import RunFolder
from afqmc_exp.tracking.mlflow_run import NoRun
from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
from afqmc_exp.training import outputs as outputs_module
from afqmc_exp.training.outputs import RunOutputs, Scored
from afqmc_exp.training.trainer import FitResult
from helpers import pairs_split, tiny_pairs, tiny_pretrained


@pytest.fixture
def finished(tmp_path):
    """A run folder, the run's outputs and what a finished training hands them: dev and test scored."""
    tokenizer = tiny_pretrained(tmp_path / "tiny").tokenizer
    splits = {"dev": pairs_split(tiny_pairs(6, seed=1), tokenizer, 24),
              "test": pairs_split(tiny_pairs(4, seed=2), tokenizer, 24)}  # fmt: skip
    probs = {"dev": np.tile([0.3, 0.7], (6, 1)), "test": np.tile([0.8, 0.2], (4, 1))}
    scored = Scored({"final/dev_accuracy": 0.5}, probs, threshold=0.6)
    result = FitResult(best_metric=0.5, best_step=4, best_dir=tmp_path / "run" / "best_model", steps=8, pairs_seen=128)
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    outputs = RunOutputs(folder, NoRun(), MlflowTracking(enabled=False, run_name="the-run"))
    return folder, outputs, result, splits, scored


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_finished_run_leaves_plots_predictions_and_its_result(finished):
    folder, outputs, result, splits, scored = finished
    outputs.write(result, splits, scored, ["0", "1"], "accuracy")
    assert sorted(p.name for p in folder.plots.iterdir()) == ["confusion_matrix.png", "pr_curve.png", "roc_curve.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in folder.plots.iterdir())
    dev, test = lines(folder.predictions("dev")), lines(folder.predictions("test"))
    pairs = splits["dev"].pairs()
    assert [(d["id"], d["sentence1"], d["gold"]) for d in dev] == [(p.id, p.text_a, str(p.label)) for p in pairs]
    assert {d["label"] for d in dev} == {"1"} and {t["label"] for t in test} == {"0"}  # 0.7 >= 0.6 > 0.2
    assert len(test) == 4 and "sentence1" not in test[0]
    record = json.loads(folder.result.read_text())
    assert (record["best_metric"], record["best_step"], record["steps"], record["pairs_seen"]) == (0.5, 4, 8, 128)
    assert record["final/dev_accuracy"] == 0.5 and record["mlflow_run_id"] is None


@pytest.mark.parametrize("given,expected", [("the-run", "the-run"), (None, "bold-owl-7")])
def test_the_plots_are_titled_with_the_runs_name_mlflows_own_where_none_was_given(finished, monkeypatch, given,
                                                                                   expected):  # fmt: skip
    folder, outputs, result, splits, scored = finished
    titles = []
    monkeypatch.setattr(outputs_module, "dev_plots", lambda *args: titles.append(args[3]) or {})
    outputs.tracking.run_name, outputs.mlflow_run.name = given, "bold-owl-7"
    outputs.write(result, splits, scored, ["0", "1"], "accuracy")
    assert titles == [expected]


@pytest.mark.parametrize("failing", ["dev_plots", "prediction_lines"])
def test_result_json_is_written_last(finished, monkeypatch, failing):
    """A kill (here: an error) while the plots or the predictions are written leaves no result.json, which would
    mark the run finished without them."""
    folder, outputs, result, splits, scored = finished

    def fails(*args):
        raise OSError("disk full")

    monkeypatch.setattr(outputs_module, failing, fails)
    with pytest.raises(OSError, match="disk full"):
        outputs.write(result, splits, scored, ["0", "1"], "accuracy")
    assert not folder.result.exists()
