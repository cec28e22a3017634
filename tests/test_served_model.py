"""The model ``tracking.log_model=true`` logs (``tracking/served_model.py``), loaded as MLflow loads it, without a
store: it answers pairs as ``afqmc-predict`` does (the same labels, probabilities and saved threshold), in batches."""

import json
import types

import pandas as pd
import pytest

from helpers import tiny_pretrained

PAIRS = [("how do i repay my huabei", "when is the bill due"), ("open account", "open account"),
         ("why was payment refused", "can i pay by card")] * 30  # 90 pairs: more than one batch  # fmt: skip


@pytest.fixture
def weights(tmp_path):
    pretrained = tiny_pretrained(tmp_path / "best_model")
    pretrained.model.save_pretrained(tmp_path / "best_model")
    pretrained.tokenizer.save_pretrained(tmp_path / "best_model")
    meta = {"labels": ["0", "1"], "max_length": 16, "threshold": 0.37}
    (tmp_path / "best_model" / "afqmc_exp.json").write_text(json.dumps(meta))
    return tmp_path / "best_model"


def served(weights):
    import importlib
    import sys
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # the module loaded afresh, as a server loads it
        warnings.simplefilter("always")
        sys.modules.pop("afqmc_exp.tracking.served_model", None)
        importlib.import_module("afqmc_exp.tracking.served_model")
    advice = [str(w.message) for w in caught if "type hint" in str(w.message) and "predict" in str(w.message)]
    assert not advice, advice  # MLflow's "Add type hints to the predict method", shown to every server's user
    from afqmc_exp.tracking.served_model import PairClassifier

    model = PairClassifier()
    model.load_context(types.SimpleNamespace(artifacts={"weights": str(weights)}))
    return model


def test_the_served_model_answers_as_predict_does_with_the_saved_threshold(weights, capsys):
    from afqmc_exp.commands.score import predict_main

    answers = served(weights).predict(None, pd.DataFrame({"text": [a for a, _ in PAIRS],
                                                          "text_pair": [b for _, b in PAIRS]}))  # fmt: skip
    assert len(answers) == len(PAIRS) and list(answers.columns) == ["label", "prob", "probs"]
    for (first, second), (_, row) in zip(PAIRS[:3], answers.iterrows(), strict=False):
        predict_main([f"ckpt={weights}", f"sentence1={first}", f"sentence2={second}", "device=cpu"])
        expected = json.loads(capsys.readouterr().out)
        assert row["label"] == expected["label"] and row["prob"] == pytest.approx(expected["prob"], abs=1e-6)
        assert row["probs"] == pytest.approx(expected["probs"], abs=1e-6)
        assert row["label"] == ("1" if row["prob"] >= 0.37 else "0")  # the threshold saved with the weights


def test_weights_without_our_facts_answer_with_the_defaults(weights):
    (weights / "afqmc_exp.json").unlink()
    model = served(weights)
    assert (model.labels, model.threshold, model.max_length) == (["0", "1"], 0.5, 128)


def test_a_request_may_name_its_columns_as_the_clue_files_or_the_task_does(weights):
    import json as json_module

    from mlflow.exceptions import MlflowException

    meta = {"labels": ["0", "1"], "max_length": 16, "fields": {"text_a": "q1", "text_b": "q2"}}
    (weights / "afqmc_exp.json").write_text(json_module.dumps(meta))
    model = served(weights)
    firsts, seconds = [a for a, _ in PAIRS[:3]], [b for _, b in PAIRS[:3]]
    expected = model.predict(None, pd.DataFrame({"text": firsts, "text_pair": seconds}))
    for first, second in (("sentence1", "sentence2"), ("q1", "q2")):
        got = model.predict(None, pd.DataFrame({first: firsts, second: seconds}))
        assert got["prob"].tolist() == expected["prob"].tolist()
    with pytest.raises(MlflowException, match=r"text/text_pair or sentence1/sentence2 or q1/q2 \(got question, answ"):
        model.predict(None, pd.DataFrame({"question": firsts, "answer": seconds}))
    with pytest.raises(MlflowException, match="got none of them: the server drops columns the signature lacks"):
        model.predict(None, pd.DataFrame(index=range(2)))  # what the server passes on when no column matches


def test_the_logged_signature_lets_every_pair_of_columns_through(weights):
    from afqmc_exp.tracking.served_model import pair_columns

    assert pair_columns({}) == [("text", "text_pair"), ("sentence1", "sentence2")]
    assert pair_columns({"fields": {"text_a": "q1", "text_b": "q2"}})[-1] == ("q1", "q2")
    assert len(pair_columns({"fields": {"text_a": 1, "text_b": 2}})) == 2  # positions in a headerless TSV
    assert len(pair_columns({"fields": {"text_a": "sentence1", "text_b": "sentence2"}})) == 2
