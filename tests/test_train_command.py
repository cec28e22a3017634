"""The train command's own decisions, called directly (``commands/train.py``, ``commands/config_checks.py``): the
command line checked before Hydra runs it, the default run name, which folder ``resume=`` means, and a refused
run's folder discarded. (Bad values, one per line, and the same through ``train.py``: test_config_checks.py.)"""

import os
import re

import pytest
from omegaconf import OmegaConf

from afqmc_exp.commands.config_checks import check_command_line
from afqmc_exp.commands.train import config_dir, discard_if_unused, find_run_dir
from afqmc_exp.run_folder import RunFolder
from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
from afqmc_exp.tracking.run_tracking import config_digest, default_run_name, saved_choices
from helpers import compose, held_elsewhere

QUIET = ["model=minilm", "data.dir=/data/afqmc"]  # a model that needs no Hub; the data is read only when training


def command_line(*argv):
    """What ``afqmc-train ARGV`` answers before Hydra runs: None (Hydra goes on) or the error it exits with."""
    try:
        check_command_line([*argv], config_dir())
    except SystemExit as stop:
        return str(stop)
    return None


@pytest.mark.parametrize(
    "argv,error",
    [
        ([*QUIET, "optim.lrr=1"], "error: optim.lrr: no such key (did you mean optim.lr?)"),
        (["--multirun", *QUIET, "optim.lr=1e-5,2e-5", "trainer.epoch=1,2"],
         "error: trainer.epoch: no such key (did you mean trainer.epochs?)"),
        ([*QUIET, "optim.lrr=1", "data.batchsize=8"], "error: optim.lrr: no such key (did you mean optim.lr?)\n"
         "       data.batchsize: no such key (did you mean data.batch_size?)"),
        ([*QUIET, "zzzqqq=1"], "error: zzzqqq: no such key"),  # nothing close: no guess
        (["model=minlm"], "error: model=minlm: no such option (did you mean model=minilm?); the options of model: "
         "bert, minilm, pretrained, roberta"),
    ],
    ids=["typo", "typo in a sweep", "two typos", "nothing close", "an option no group has"],
)  # fmt: skip
def test_a_misspelt_key_or_option_is_one_line_with_the_closest_one(argv, error):
    assert command_line(*argv) == error


def test_a_key_added_with_plus_is_checked_against_its_groups_target():
    error = command_line(*QUIET, "+optim.lrr=1")
    assert error.startswith("error: invalid config: optim.lrr: unknown key for afqmc_exp.training.optim.adamw")


def test_a_bad_value_is_refused_before_hydra_makes_a_folder_and_a_secret_in_it_masked(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFQMC_TEST_SECRET_TOKEN", "hush-hush-42")
    error = command_line(*QUIET, "optim.lr=${oc.env:AFQMC_TEST_SECRET_TOKEN}")
    assert error == "error: invalid config: optim.lr='***': expected float"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv",
    [
        [*QUIET, "optim.lr=2e-5"],
        [*QUIET, "resume=/some/run", "optim.lr=0"],  # its config is the run's own, checked when loaded
        [*QUIET, "rerun=abc123", "optim.lr=0"],
        ["--help"],
        ["--cfg", "job", "optim.lrr=1"],  # Hydra's own business
    ],
    ids=["valid", "resume", "rerun", "help", "cfg"],
)
def test_what_the_check_leaves_to_hydra_passes(argv):
    assert command_line(*argv) is None


# ------------------------------------------------------------------------------------ the run's name
@pytest.mark.parametrize(
    "overrides,choices,swept,name",
    [
        ([], {"model": "minilm"}, [], "minilm-afqmc-lr2e-05-bs16-s42"),
        (["optim.lr=3e-5", "data.batch_size=32", "seed=7"], {"model": "minilm"}, ["optim.lr", "seed"],
         "minilm-afqmc-lr3e-05-bs32-s7"),  # what the name always shows is not repeated
        (["trainer.epochs=2", "scheduler.warmup_ratio=0.123456"], {"model": "minilm", "regularizer": "fgm"},
         ["trainer.epochs", "regularizer", "scheduler.warmup_ratio"],
         "minilm-afqmc-lr2e-05-bs16-s42-epochs2-fgm-warmup_ratio0.123"),
        (["data=cmnli", "model.name_or_path=/models/chinese-roberta"], {}, [],
         "chinese-roberta-cmnli-lr2e-05-bs16-s42"),  # no group option: the model's folder
    ],
    ids=["defaults", "swept keys of the name", "other swept keys", "no choices"],
)  # fmt: skip
def test_the_default_run_name_says_model_task_lr_batch_seed_and_what_a_sweep_varies(overrides, choices, swept, name):
    cfg = compose(QUIET + overrides)
    digest = "" if swept else f"-{config_digest(cfg)[:4]}"  # outside a sweep: what tells the config apart
    assert default_run_name(cfg, choices, swept) == name + digest


def test_runs_whose_configs_differ_have_names_that_differ_and_a_config_run_again_keeps_its_name():
    def name(*overrides):
        return default_run_name(compose(QUIET + list(overrides)), {"model": "minilm"})

    full, control = name(), name("trainer.max_steps=40")
    assert full != control and full.rsplit("-", 1)[0] == control.rsplit("-", 1)[0]
    assert name("tracking.experiment=other", "tracking.log_weights=false") == full  # where it is recorded: the same run
    assert re.fullmatch(r"minilm-afqmc-lr2\.59e-05-bs16-s42-[0-9a-f]{4}", name("optim.lr=2.58817e-05"))


def test_a_config_saved_before_there_were_tasks_is_named_as_afqmc():
    cfg = OmegaConf.create({"model": {"name_or_path": "/models/bert"}, "data": {"batch_size": 8},
                            "optim": {"lr": 1e-5}, "seed": 1})  # fmt: skip
    assert re.fullmatch(r"bert-afqmc-lr1e-05-bs8-s1-[0-9a-f]{4}", default_run_name(cfg, {}))


# ------------------------------------------------------------------------------------ resume= and refused runs
def run_folder(path):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    return path


def test_resume_of_a_run_folder_is_that_folder(tmp_path):
    tracking = MlflowTracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert find_run_dir(str(run_folder(tmp_path / "run")), tracking) == tmp_path / "run"
    assert not (tmp_path / "mlflow.db").exists()  # a folder is found without asking the store


def test_resume_of_an_mlflow_run_id_is_the_folder_its_tag_names(tmp_path, store_uri):
    tracking = MlflowTracking(uri=store_uri, experiment="e")
    folder = run_folder(tmp_path / "outputs" / "run")
    run = tracking.start({}, {"hydra.output_dir": str(folder)}, folder)
    run.end()
    assert find_run_dir(run.run_id, tracking) == folder


@pytest.mark.parametrize("what", ["a missing folder", "an unknown run id", "a run id, no store"])
def test_resume_of_something_that_is_not_a_run_is_one_clear_line_and_makes_no_store(tmp_path, what, request):
    tracking = MlflowTracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e")
    if what == "an unknown run id":
        request.getfixturevalue("store_uri")  # a store ...
        tracking.start({}, {}, tmp_path / "other").end()  # ... with another run
    before = sorted(os.listdir(tmp_path))
    resume = str(tmp_path / "no-such-run") if what == "a missing folder" else "0123456789abcdef"
    with pytest.raises(SystemExit) as stop:
        find_run_dir(resume, tracking)
    no_store = "" if what == "an unknown run id" else " (no store is there)"
    assert str(stop.value) == (
        f"error: resume={resume}: neither a run's output folder nor the id of an MLflow run in {tracking.uri}{no_store}"
    )
    assert sorted(os.listdir(tmp_path)) == before  # no mlflow.db, no lock beside it


def test_resume_of_a_folder_without_a_saved_config_says_so(tmp_path):
    (tmp_path / "somewhere").mkdir()
    with pytest.raises(SystemExit, match=r"somewhere has no \.hydra/config\.yaml; is it a train\.py output folder"):
        find_run_dir(str(tmp_path / "somewhere"), MlflowTracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))


def test_a_resumed_run_is_named_after_the_options_it_was_started_with(tmp_path):
    folder = run_folder(tmp_path / "run")
    assert saved_choices(RunFolder(folder)) == {}  # saved without Hydra's settings
    (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      model: roberta\n")
    assert saved_choices(RunFolder(folder)) == {"model": "roberta"}


def test_a_folder_a_refused_run_left_is_removed_with_its_empty_date_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused = tmp_path / "outputs" / "2026-01-01" / "10-00-00.000001"
    (refused / ".hydra").mkdir(parents=True)
    (refused / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (refused / "train.log").write_text("error\n")
    (refused / ".run.lock").write_text("")
    discard_if_unused(RunFolder(refused))
    assert os.listdir(tmp_path) == []  # outputs/ and its date folder went too: nothing else was in them


def test_a_folder_with_anything_a_run_made_is_kept_and_so_are_its_neighbours(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    day = tmp_path / "outputs" / "2026-01-01"
    used, refused = day / "10-00-00.000001", day / "10-00-01.000001"
    for folder in (used, refused):
        (folder / ".hydra").mkdir(parents=True)
    (used / "mlflow_run_id").write_text("abc\n")
    discard_if_unused(RunFolder(used))
    assert used.exists()
    discard_if_unused(RunFolder(refused))
    assert not refused.exists() and sorted(os.listdir(day)) == ["10-00-00.000001"]


def test_a_run_refused_by_its_config_exits_with_one_line_and_leaves_no_folder(tmp_path):
    from afqmc_exp.commands.train import train_from_config

    cfg = compose([*QUIET, "optim.lr=0"], tmp_path)
    (tmp_path / "run" / ".hydra").mkdir(parents=True)  # what Hydra made before the run started
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(SystemExit) as stop:
        train_from_config(cfg)
    assert str(stop.value) == "error: invalid config: optim.lr=0: must be > 0, e.g. optim.lr=2e-5"
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


def test_rerun_of_a_run_without_a_logged_config_is_one_clear_line(tmp_path, store_uri):
    from afqmc_exp.commands.train import config_of_run

    tracking = MlflowTracking(uri=store_uri, experiment="e")
    run = tracking.start({}, {}, tmp_path / "run")
    run.end()
    with pytest.raises(SystemExit, match=rf"^error: rerun={run.run_id}: no hydra/config.yaml for that run in sqlite"):
        config_of_run(run.run_id, tracking)


# ------------------------------------------------------------------------------------ a folder not ours, or damaged
def saved(path, text):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(text)
    (path / "train.log").write_text("their log\n")
    return path


def contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("config,problem", [
    ("trainer:\n  _target_: otherproj.Trainer\nseed: 1\n", "it is not an afqmc-exp run's config"),
    ("trainer: [unclosed\n", "it cannot be read (while parsing"),
])  # fmt: skip
def test_resume_of_a_folder_that_is_not_ours_writes_nothing_into_it_and_is_one_line(tmp_path, monkeypatch, config,
                                                                                     problem):  # fmt: skip
    from afqmc_exp.commands.train import train_from_config

    monkeypatch.chdir(tmp_path)
    theirs = saved(tmp_path / "otherproj" / "run", config)
    before = contents(theirs)
    cfg = compose([*QUIET, f"resume={theirs}"], tmp_path)
    saved(tmp_path / "run", OmegaConf.to_yaml(cfg))  # what Hydra made for the resuming command
    with pytest.raises(SystemExit) as stop:
        train_from_config(cfg)
    message = str(stop.value)
    assert message.startswith(f"error: resume={theirs}: its {theirs / '.hydra' / 'config.yaml'} is no run config of "
                              f"afqmc-exp: {problem}") and message.endswith("nothing was written there")  # fmt: skip
    assert len(message.splitlines()) == 1
    assert contents(theirs) == before  # no train.log line, no lock, no store
    assert sorted(os.listdir(tmp_path)) == ["otherproj"]  # the resuming command's own folder went too


def finished_folder(path, result_text):
    folder = saved(path, OmegaConf.to_yaml(compose(QUIET)))
    (folder / "mlflow_run_id").write_text("abc123\n")
    (folder / "result.json").write_text(result_text)
    return folder


def test_resume_of_a_run_with_a_cut_result_json_is_one_line_with_the_fix(tmp_path, monkeypatch):
    from afqmc_exp.commands.train import train_from_config

    monkeypatch.chdir(tmp_path)
    folder = finished_folder(tmp_path / "done", '{"best_metric": 0.5, "met')
    with pytest.raises(SystemExit) as stop:
        train_from_config(compose([*QUIET, f"resume={folder}"], tmp_path))
    message = str(stop.value)
    assert message.startswith(f"error: {folder / 'result.json'}: damaged") and "mv " in message, message
    assert "resume again" in message and len(message.splitlines()) == 1


def test_a_training_loss_that_is_not_finite_is_one_line(tmp_path, monkeypatch):
    import afqmc_exp.commands.train as train_command
    from afqmc_exp.training.trainer import NonFiniteLossError

    def diverges(*args, **kwargs):
        raise NonFiniteLossError("training loss is nan at step 3; lower optim.lr")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_command, "_train", diverges)
    with pytest.raises(SystemExit) as stop:
        train_command.train_from_config(compose(QUIET, tmp_path))
    assert str(stop.value) == "error: training loss is nan at step 3; lower optim.lr"


# ------------------------------------------------------------------------------------ hydra.run.dir of an earlier run
def hydra_config(overrides, run_dir):
    """The config Hydra hands its callbacks when a single run starts (with the hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)


def started(overrides, run_dir):
    """What the guard makes of a single run about to start in ``run_dir``: its error line, or the config it lets
    Hydra run (None: refused)."""
    from afqmc_exp.commands.earlier_run import RunFolderGuard

    config = hydra_config(overrides, run_dir)
    try:
        RunFolderGuard().on_run_start(config=config)
    except SystemExit as stop:
        return str(stop.code), None
    finally:  # the folder let go, as this process's end (or the run's) would
        RunFolderGuard().on_run_end(config=config)
    return None, config


def starting_folder(path, overrides):
    """A run folder of ``overrides`` as its command makes it before its run opens: Hydra's files, a log."""
    config = hydra_config(overrides, path)
    return saved(path, OmegaConf.to_yaml(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])))


def killed_folder(path, overrides):
    """A run folder of ``overrides`` as a kill after its step-3 checkpoint leaves it."""
    folder = starting_folder(path, overrides)
    (folder / "mlflow_run_id").write_text("abc123\n")
    (folder / "last_checkpoint").mkdir()
    (folder / "last_checkpoint" / "trainer_state.pt").write_bytes(b"state at step 3")
    return folder


def test_a_new_or_empty_run_folder_is_left_to_hydra(tmp_path):
    guard = hydra_config(QUIET, tmp_path).hydra.callbacks.run_folder_guard  # registered for every run
    assert guard._target_ == "afqmc_exp.commands.earlier_run.RunFolderGuard"
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new", tmp_path / "empty"):
        error, config = started(QUIET, folder)
        assert error is None and config.resume is None and config.hydra.output_subdir == ".hydra"


def test_the_same_command_in_a_killed_runs_folder_continues_it(tmp_path):
    folder = killed_folder(tmp_path / "run", QUIET)
    error, config = started(QUIET, folder)
    assert error is None and config.resume == str(folder)  # the train command resumes it: same MLflow run
    assert config.hydra.output_subdir is None  # Hydra keeps its hands off the run's saved config


def test_another_command_in_a_killed_runs_folder_is_refused_naming_resume(tmp_path):
    folder = killed_folder(tmp_path / "run", QUIET)
    before = contents(folder)
    error, _ = started([*QUIET, "optim.lr=1e-4"], folder)
    assert error == (f"error: hydra.run.dir={folder}: holds run abc123, killed before it finished, started otherwise "
                     f"(optim.lr: 2e-05 there, 0.0001 here); continue it with resume={folder}, or give a new "
                     "hydra.run.dir")  # fmt: skip
    assert contents(folder) == before


def test_a_finished_runs_folder_is_never_written_again(tmp_path):
    folder = finished_folder(tmp_path / "run", '{"best_metric": 0.5, "metric": "accuracy", "best_step": 4, '
                             '"mlflow_run_id": "abc123"}')  # fmt: skip
    (folder / "best_model").mkdir()
    (folder / "best_model" / "model.safetensors").write_bytes(b"weights")
    before = contents(folder)
    for overrides in (QUIET, [*QUIET, "optim.lr=1e-4"], [*QUIET, "rerun=abc123"]):
        error, _ = started(overrides, folder)
        assert error.startswith(
            f"error: hydra.run.dir={folder}: holds a finished run (best dev accuracy 0.5000 at "
            "step 4, MLflow run abc123), which is never written again: leave hydra.run.dir out"
        )
        assert f"resume={folder} to see its result" in error and len(error.splitlines()) == 1
    assert contents(folder) == before
    error, config = started([*QUIET, f"resume={folder}"], folder)  # resume= of it: reported, not retrained
    assert error is None and config.hydra.output_subdir is None


def test_beside_the_main_process_resume_of_a_finished_run_leaves_its_record_to_the_main_one(tmp_path, monkeypatch):
    """torchrun's other ranks report the finished run but do not complete its record: all of them would contend for
    the folder's lock, and the losers would fail the launch."""
    from afqmc_exp.commands import train
    from afqmc_exp.tracking.masking import Masker
    from afqmc_exp.training import run

    folder = finished_folder(tmp_path / "run", '{"best_metric": 0.5, "metric": "accuracy", "best_step": 4}')
    monkeypatch.setattr(run, "complete_record", lambda *args: pytest.fail("completed beside the main process"))
    monkeypatch.setenv("RANK", "1")
    assert train.report_finished(RunFolder(folder), MlflowTracking(enabled=False), Masker()) == 0.5


def test_another_programs_hydra_folder_is_refused_as_the_run_folder(tmp_path):
    folder = saved(tmp_path / "theirs", "trainer:\n  _target_: otherproj.Trainer\n")
    error, _ = started(QUIET, folder)
    assert error.startswith(f"error: hydra.run.dir={folder}: holds another program's run (it is not an afqmc-exp")


def test_beside_the_main_process_the_guard_judges_nothing_and_hydra_writes_nothing(tmp_path, monkeypatch):
    """torchrun's other ranks run Hydra too, on the main process's folder as it writes it: only the main one judges
    it (the others read half-written files); theirs get its decision with its folder
    (training.run.as_the_main_process_has)."""
    killed = killed_folder(tmp_path / "run", QUIET)
    saved_text = (killed / ".hydra" / "config.yaml").read_text()
    monkeypatch.setenv("RANK", "1")
    error, config = started(QUIET, killed)
    assert error is None and config.get("resume") is None and config.hydra.output_subdir is None
    assert (killed / ".hydra" / "config.yaml").read_text() == saved_text
    monkeypatch.setenv("RANK", "0")
    error, config = started(QUIET, killed)
    assert error is None and config.resume == str(killed)  # the main process continues it


@pytest.mark.parametrize("made", ["writing", "starting", "killed"])
def test_a_folder_another_process_runs_in_is_refused_before_anything_is_written_there(tmp_path, made):
    """A fixed hydra.run.dir started twice (a job submitted twice, a second terminal): while the first command runs
    there, from its first moment (Hydra writing its config, then a config and a log, no run yet) to its end, the
    second is refused in one line and nothing of the first's is touched (neither its saved config nor its log)."""
    if made == "writing":  # the first command's Hydra halfway through its config file: not read, not judged
        folder = saved(tmp_path / "run", "seed: 1\ntrainer: {max_st")
    else:
        folder = (starting_folder if made == "starting" else killed_folder)(tmp_path / "run", QUIET)
    with held_elsewhere(RunFolder(folder).lock):
        before = contents(folder)  # with the lock file the first command made
        error, _ = started(QUIET, folder)
    assert error == (f"error: hydra.run.dir={folder}: another process is running a run in this folder (the same "
                     "command started twice?); nothing was written there: give a new hydra.run.dir, or wait for it "
                     "to end")  # fmt: skip
    assert contents(folder) == before


def test_a_refused_command_never_deletes_a_folder_another_process_holds(tmp_path):
    """A command refused after Hydra made its folder deletes that folder (nothing of a run is in it), unless another
    process holds it: then it is that process's run, starting."""
    folder = saved(tmp_path / "run", "seed: 1\n")
    with held_elsewhere(RunFolder(folder).lock):
        discard_if_unused(RunFolder(folder))
    assert (folder / ".hydra" / "config.yaml").read_text() == "seed: 1\n" and (folder / "train.log").exists()


def test_the_guard_takes_the_folder_for_its_process_until_the_run_ends(tmp_path):
    """From the first moment of a run, before Hydra writes there: a second command met later is refused by its
    guard, never half-way through (after Hydra rewrote the first one's config). The run itself takes it again."""
    import subprocess
    import sys

    from afqmc_exp.commands.earlier_run import RunFolderGuard
    from afqmc_exp.training.run import taken

    folder = tmp_path / "run"

    def another_process_takes_it() -> bool:
        probe = ("import sys; from filelock import FileLock, Timeout\ntry: FileLock(sys.argv[1], timeout=0).acquire()"
                 "\nexcept Timeout: sys.exit(1)")  # fmt: skip
        return subprocess.run([sys.executable, "-c", probe, str(RunFolder(folder).lock)]).returncode == 0

    config = hydra_config(QUIET, folder)
    RunFolderGuard().on_run_start(config=config)
    try:
        assert not another_process_takes_it()
        with taken(RunFolder(folder)):  # this process's run
            pass
        assert not another_process_takes_it()  # still this process's: the run has not ended
    finally:
        RunFolderGuard().on_run_end(config=config)
    assert another_process_takes_it()


def test_resume_of_a_run_another_process_is_running_is_refused_before_a_line_goes_into_its_log(tmp_path, monkeypatch):
    from afqmc_exp.commands.train import train_from_config

    monkeypatch.chdir(tmp_path)
    folder = killed_folder(tmp_path / "theirs", ["experiment=quickstart"])  # data it could train on
    with held_elsewhere(RunFolder(folder).lock):
        before = contents(folder)
        with pytest.raises(SystemExit) as stop:
            train_from_config(compose([f"resume={folder}"], tmp_path))
        assert str(stop.value) == (f"error: {folder}: another process is running this run (a resume started twice?); "
                                   "wait for it to end, or stop it, then resume")  # fmt: skip
        assert contents(folder) == before
