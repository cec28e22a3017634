"""``afqmc-predict`` writing a file (``commands/score.py``): nothing of the user's is deleted or overwritten but its
own predictions, whatever ``file=`` and ``out=`` name; what it writes is readable by others as the run folder is."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from helpers import REPO, tiny_pretrained

SAMPLE_DEV = REPO / "afqmc_exp" / "data" / "quickstart" / "dev.json"


@pytest.fixture
def weights(tmp_path):
    pretrained = tiny_pretrained(tmp_path / "best_model")
    pretrained.model.save_pretrained(tmp_path / "best_model")
    pretrained.tokenizer.save_pretrained(tmp_path / "best_model")
    return tmp_path / "best_model"


def predict(monkeypatch, *argv) -> str | None:
    """``afqmc-predict ARGV``: None on success, else the one line it exits with."""
    from afqmc_exp.commands.score import predict_main

    monkeypatch.setattr(sys, "argv", ["afqmc-predict", *map(str, argv)])
    try:
        predict_main()
    except SystemExit as stop:
        return str(stop.code)
    return None


def is_predictions(path) -> bool:
    lines = path.read_text().splitlines()
    return bool(lines) and all({"label", "prob", "probs"} <= set(json.loads(line)) for line in lines)


def test_an_input_named_like_the_part_file_is_never_deleted(weights, tmp_path, monkeypatch):
    source = tmp_path / "preds.jsonl.part"
    source.write_bytes(SAMPLE_DEV.read_bytes())
    assert predict(monkeypatch, f"ckpt={weights}", f"file={source}", f"out={tmp_path / 'preds.jsonl'}") is None
    assert source.read_bytes() == SAMPLE_DEV.read_bytes() and is_predictions(tmp_path / "preds.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["best_model", "preds.jsonl", "preds.jsonl.part"]


def test_out_naming_a_folder_is_one_line_before_anything_is_scored(weights, tmp_path, monkeypatch):
    (tmp_path / "preds").mkdir()
    said = predict(monkeypatch, f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={tmp_path / 'preds'}")
    assert said == f"error: out={tmp_path / 'preds'}: is a folder; name the file to write, e.g. " \
        f"out={tmp_path / 'preds' / 'predictions.jsonl'}"  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["best_model", "preds"] and os.listdir(tmp_path / "preds") == []


def test_out_replaces_earlier_predictions_but_never_another_file(weights, tmp_path, monkeypatch):
    mine = tmp_path / "train.json"
    mine.write_bytes(SAMPLE_DEV.read_bytes())
    said = predict(monkeypatch, f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={mine}")
    assert said.startswith(f"error: out={mine}: exists and is not a predictions file") and "another out=" in said
    assert mine.read_bytes() == SAMPLE_DEV.read_bytes()
    out = tmp_path / "preds.jsonl"
    out.write_text("")  # an earlier, empty, predictions file
    for _ in range(2):  # then an earlier full one
        assert predict(monkeypatch, f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={out}") is None
        assert is_predictions(out) and len(out.read_text().splitlines()) == 160


def test_a_file_whose_first_line_is_blank_is_not_taken_for_earlier_predictions(weights, tmp_path, monkeypatch):
    mine = tmp_path / "dev.jsonl"
    mine.write_text("\n" + SAMPLE_DEV.read_text())  # a data file a blank line opens: a user's, not ours
    said = predict(monkeypatch, f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={mine}")
    assert said.startswith(f"error: out={mine}: exists and is not a predictions file")
    assert mine.read_text() == "\n" + SAMPLE_DEV.read_text()


def test_out_that_is_not_a_file_is_refused_never_read_nor_replaced(weights, tmp_path, monkeypatch):
    """A pipe (or a device: /dev/null replaced by a file would break the machine for everyone) is no file predict can
    replace whole; it is not even opened to see whether it holds predictions (a pipe would block)."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    said = predict(monkeypatch, f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={pipe}")
    assert said == (f"error: out={pipe}: is not a file (a device or a pipe), which predict cannot replace whole; "
                    "name a file to write")  # fmt: skip
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and sorted(os.listdir(tmp_path)) == ["best_model", "pipe"]


def test_a_bad_line_halfway_leaves_the_earlier_predictions_and_no_part_file(weights, tmp_path, monkeypatch):
    import afqmc_exp.commands.score as score

    monkeypatch.setattr(score, "CHUNK", 50)  # the bad line is read after two chunks were written
    out = tmp_path / "preds.jsonl"
    assert predict(monkeypatch, f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={out}") is None
    before = out.read_bytes()
    broken = tmp_path / "broken.json"
    lines = SAMPLE_DEV.read_text().splitlines()
    broken.write_text("\n".join(lines[:120] + ["{oops"] + lines[120:]) + "\n")
    said = predict(monkeypatch, f"ckpt={weights}", f"file={broken}", f"out={out}")
    assert said.startswith(f"error: {broken}:121: not valid JSON")
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["best_model", "broken.json", "preds.jsonl"]


def test_predictions_are_readable_as_the_umask_says(weights, tmp_path, monkeypatch):
    out = tmp_path / "preds.jsonl"
    previous = os.umask(0o022)
    try:
        assert predict(monkeypatch, f"ckpt={weights}", f"file={SAMPLE_DEV}", f"out={out}") is None
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@pytest.mark.slow  # starts processes
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user (nobody)")
def test_weights_another_user_cannot_read_are_one_line_naming_the_file_and_its_owner(weights):
    """As a teammate meets weights written for their owner only (0600): one line, not a misleading traceback."""
    import shutil
    import tempfile

    from helpers import run_command

    shared = Path(tempfile.mkdtemp(prefix="afqmc-shared-"))  # outside root's own 0700 pytest folder
    try:
        shared.chmod(0o755)
        folder = shared / "best_model"
        shutil.copytree(weights, folder)
        for path in [folder, *folder.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (folder / "model.safetensors").chmod(0o600)
        code = ("import os, sys; import afqmc_exp.commands.score as score, afqmc_exp.tracking.stored_weights, "
                "afqmc_exp.training.checkpoint, afqmc_exp.model; os.setgid(65534); os.setuid(65534); "
                f"score.predict_main(['ckpt={folder}', 'sentence1=a', 'sentence2=b'])")  # fmt: skip
        done = run_command([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.strip() == (
            f"error: ckpt={folder}: {folder / 'model.safetensors'} cannot be read by this "
            f"user (it is root's, mode 0o600); ask root to run: chmod -R a+rX {folder}"
        )
    finally:
        shutil.rmtree(shared)
