"""The installed commands exit as scripts must: 0 on success, 1 with one line on a bad argument.

The scripts pip generates call ``sys.exit(main())``, so a ``main`` that returns anything but None (a dict, a
path) exits 1 after printing it on stderr; ``python predict.py`` ignores the return value, so only the
scripts themselves show it. Each script is loaded here from the installed distribution's entry points.
"""

import json
import sys
from importlib.metadata import entry_points

import pytest

from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
from helpers import REPO, tiny_pretrained

SCRIPTS = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("afqmc-")}
SAMPLE_DEV = REPO / "afqmc_exp" / "data" / "quickstart" / "dev.json"


def exit_status(name: str, argv: list[str], monkeypatch) -> int:
    """What the generated script ``name`` exits with (a message, which Python prints on stderr, exits 1)."""
    return exit_of(name, argv, monkeypatch)[0]


def exit_of(name: str, argv: list[str], monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(SystemExit) as exited:
        sys.exit(SCRIPTS[name].load()())
    code = exited.value.code
    return (0, "") if code is None else (code, "") if isinstance(code, int) else (1, str(code))


@pytest.fixture
def weights(tmp_path):
    pretrained = tiny_pretrained(tmp_path / "best_model")
    pretrained.model.save_pretrained(tmp_path / "best_model")
    pretrained.tokenizer.save_pretrained(tmp_path / "best_model")
    return tmp_path / "best_model"


def test_every_command_is_installed():
    assert set(SCRIPTS) == {"afqmc-train", "afqmc-evaluate", "afqmc-predict", "afqmc-report", "afqmc-disk"}


def test_predict_and_evaluate_exit_0_on_success(weights, tmp_path, monkeypatch, capsys):
    pair = ["sentence1=how do i repay", "sentence2=can i pay back early", "device=cpu"]
    assert exit_status("afqmc-predict", [f"ckpt={weights}", *pair], monkeypatch) == 0
    printed = capsys.readouterr()
    assert set(json.loads(printed.out)) >= {"label", "prob"} and not printed.err.strip()
    out = tmp_path / "predictions.jsonl"
    assert exit_status("afqmc-predict", [f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={out}"], monkeypatch) == 0
    assert len(out.read_text().splitlines()) == 160
    assert exit_status("afqmc-evaluate", [f"ckpt={weights}", f"file={SAMPLE_DEV}"], monkeypatch) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 160


def test_report_exits_0_on_success(tmp_path, monkeypatch, capsys, store_uri):
    uri = store_uri
    run = MlflowTracking(uri=uri, experiment="afqmc", run_name="r").start({"trainer.metric": "f1"}, {}, tmp_path)
    run.log_metrics({"best/dev_f1": 0.5, "final/dev_loss": 0.6}, 1)
    run.end()
    assert exit_status("afqmc-report", [f"uri={uri}", f"out={tmp_path / 'report'}"], monkeypatch) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "report" / "report.md").exists()


def test_disk_exits_0_on_success(tmp_path, monkeypatch, capsys, store_uri):
    (tmp_path / "outputs").mkdir()
    assert exit_status("afqmc-disk", [f"outputs={tmp_path / 'outputs'}", f"uri={store_uri}"], monkeypatch) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("0 run folders: 0 MB")


@pytest.mark.parametrize(
    "name,argv",
    [
        ("afqmc-train", ["optim.lrr=1"]),
        ("afqmc-evaluate", ["ckpt=x", "fille=y"]),
        ("afqmc-predict", ["ckpt=x"]),
        ("afqmc-report", ["experimnt=afqmc"]),
        ("afqmc-disk", ["output=outputs"]),
    ],
)
def test_a_bad_argument_exits_1_with_one_line(name, argv, monkeypatch):
    status, message = exit_of(name, argv, monkeypatch)
    assert status == 1 and message.startswith("error: ") and len(message.splitlines()) == 1, message


def test_a_ckpt_that_is_not_weights_says_what_it_is(weights, tmp_path, monkeypatch):
    pair = ["sentence1=a", "sentence2=b"]
    status, message = exit_of("afqmc-predict", [f"ckpt={tmp_path / 'nowhere'}", *pair], monkeypatch)
    assert (status, message) == (1, f"error: ckpt={tmp_path / 'nowhere'}: no such folder")
    status, message = exit_of("afqmc-predict", [f"ckpt={tmp_path}", *pair], monkeypatch)  # a run folder
    assert status == 1 and message.endswith(f"it is a run folder: its weights are ckpt={tmp_path / 'best_model'}")


@pytest.mark.parametrize("value", ["results/preds #2.jsonl", "a: b", "${oops}", "how do I repay #urgent"])
def test_a_text_argument_is_taken_as_written(value):
    from afqmc_exp.commands.arguments import parse_args
    from afqmc_exp.commands.score import PredictArgs

    args = parse_args(PredictArgs, ["ckpt=x", f"sentence1={value}", f"out={value}", "batch_size=4"], "afqmc-predict")
    assert (args.sentence1, args.out, args.batch_size) == (value, value, 4)


def test_out_naming_the_input_file_is_refused(weights, tmp_path, monkeypatch):
    status, message = exit_of("afqmc-predict", [f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={SAMPLE_DEV}"],
                              monkeypatch)  # fmt: skip
    assert status == 1 and "is the input file itself" in message


@pytest.mark.parametrize(
    "argv,message",
    [
        (["batch_size=-4"], "error: batch_size=-4: must be >= 1"),
        (["max_length=0"], "error: max_length=0: must be >= 8"),
    ],
)
def test_bad_sizes_are_named_as_the_command_knows_them(weights, monkeypatch, argv, message):
    status, said = exit_of("afqmc-evaluate", [f"ckpt={weights}", f"file={SAMPLE_DEV}", *argv], monkeypatch)
    assert (status, said) == (1, message)


@pytest.mark.parametrize("ckpt", ["runs:/abc/../../../x", "runs:/abc//etc/passwd", "models:/../../x/1"])
def test_an_artifact_path_out_of_the_store_is_refused(ckpt, monkeypatch, tmp_path, store_uri):
    status, said = exit_of("afqmc-predict", [f"ckpt={ckpt}", "sentence1=a", "sentence2=b", f"tracking_uri={store_uri}"],
                           monkeypatch)  # fmt: skip
    assert status == 1 and "may not hold '..' or start at '/'" in said and len(said.splitlines()) == 1


def test_pickled_weights_and_a_damaged_meta_file_are_one_line(weights, tmp_path, monkeypatch):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(weights, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"a pickle")
    status, said = exit_of("afqmc-predict", [f"ckpt={pickled}", "sentence1=a", "sentence2=b"], monkeypatch)
    assert status == 1 and "only pickles" in said and "run code" in said
    (weights / "afqmc_exp.json").write_text('{"max_length": 6')  # cut short
    status, said = exit_of("afqmc-predict", [f"ckpt={weights}", "sentence1=a", "sentence2=b"], monkeypatch)
    assert status == 1 and said.startswith(f"error: {weights / 'afqmc_exp.json'}: damaged") and "delete it" in said
