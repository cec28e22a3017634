"""evaluate, predict and report take key=value arguments: --help says each one's type, default and meaning; a
typo gets the closest argument; a wrong value is one line."""

import pytest

from afqmc_exp.commands.arguments import parse_args
from afqmc_exp.commands.report import ReportArgs
from afqmc_exp.commands.score import EvaluateArgs, PredictArgs


@pytest.mark.parametrize("schema", [EvaluateArgs, PredictArgs, ReportArgs])
def test_help_lists_every_argument_with_its_type_default_and_meaning(schema, capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(schema, ["--help"], "afqmc-x")
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: afqmc-x key=value ...")
    for line in [line for line in shown.splitlines() if line.startswith("  ")]:
        assert "=<" in line and ("default" in line or "required" in line) and len(line.split(")", 1)[1].strip()) > 5


def test_evaluate_help_names_types_and_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(EvaluateArgs, ["-h"], "afqmc-evaluate")
    shown = capsys.readouterr().out
    assert "ckpt=<str>  (required)" in shown and "batch_size=<int | None>  (default None)" in shown
    assert "threshold=<float | None>" in shown and "ensemble" in shown


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["ckpt=x", "fiel=a.json"],
            r"^error: fiel: no such argument \(did you mean file\?\); see afqmc-evaluate --help$",
        ),
        (["ckpt=x", "file=a.json", "batch_size=big"], r"^error: .*batch_size.*; see afqmc-evaluate --help$"),
        (["ckpt=x"], r"^error: missing file=...; see afqmc-evaluate --help$"),
        (["ckpt=x", "a.json"], r"^error: 'a.json': arguments are key=value"),
    ],
    ids=["typo", "wrong type", "missing", "not key=value"],
)
def test_bad_arguments_are_one_line(argv, message):
    with pytest.raises(SystemExit, match=message):
        parse_args(EvaluateArgs, argv, "afqmc-evaluate")
