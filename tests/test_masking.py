"""Secrets masked by value (``tracking/masking.py``): secret-looking keys, passwords inside URIs, the environment's
secrets, in any text, every log line and command-line overrides; the run folder's own config kept to its owner."""

import logging

import pytest

from afqmc_exp.tracking.masking import Masker, hide_run_config, install_log_filter, mask_uri

CONFIG = {
    "tracking": {"uri": "postgresql://team:pg-Secret9@db:5432/mlflow", "api_token": "tok-123456"},
    "hub": {"credentials": ["cred-abcdef"], "name": "bert"},
    "db_password": "hunter2xyz",
    "copy_of_pw": "hunter2xyz",  # what ${db_password} resolves to
    "short_secret": "abc",
    "optim": {"lr": 2e-5},
}
ENVIRON = {
    "MLFLOW_TRACKING_URI": "http://alice:uriPW-77@mlflow.example:5000",
    "MLFLOW_TRACKING_PASSWORD": "envPW-88aa",
    "HF_TOKEN": "hf_zzzzzz",
    "TOKENIZERS_PARALLELISM": "false",
    "HOME": "/home/alice",
}


@pytest.mark.parametrize(
    "text,masked",
    [
        ("http://alice:s3cret@host:5000", "http://alice:***@host:5000"),
        (
            "postgresql+psycopg://u:p%40ss@db/x and https://b:two@h",
            "postgresql+psycopg://u:***@db/x and https://b:***@h",
        ),
        ("postgresql://team:pa/ss@db/x", "postgresql://team:***@db/x"),  # SQLAlchemy takes any character but @
        ("mysql+pymysql://u:a:b/c?d@h:3306/x", "mysql+pymysql://u:***@h:3306/x"),
        ("http://host:5000/path", "http://host:5000/path"),  # a port is no password
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_a_password_inside_a_uri_is_masked_and_the_rest_of_the_uri_kept(text, masked):
    assert mask_uri(text) == masked


def test_every_kind_of_secret_in_the_config_and_the_environment_is_masked_in_any_text():
    masker = Masker.from_config(CONFIG, ENVIRON)
    text = " ".join(["tok-123456", "cred-abcdef", "hunter2xyz", "pg-Secret9", "uriPW-77", "envPW-88aa", "hf_zzzzzz"])
    assert masker(text) == " ".join(["***"] * 7)
    assert masker("lr 2e-05 bert false /home/alice") == "lr 2e-05 bert false /home/alice"  # nothing else


def test_a_value_shorter_than_four_characters_is_not_searched_for_in_free_text():
    assert Masker.from_config({"token": "abc"})("abc: the abcs of it") == "abc: the abcs of it"


def test_a_secret_containing_another_is_masked_whole():
    masker = Masker(["pass", "passphrase-long"])
    assert masker("passphrase-long and pass") == "*** and ***"
    inside = Masker(["secret9", "a-secret9-b"])  # the longer one first, whatever the alphabet says
    assert inside("x a-secret9-b y secret9") == "x *** y ***"


def test_swept_secrets_join_the_configs_and_a_value_may_hold_an_equals_sign():
    masker = Masker.from_config(CONFIG, {}, overrides=["+db_password=pa=ss-1,null", "seed=1,2"])
    assert masker("hunter2xyz pa=ss-1 tok-123456") == "*** *** ***"
    assert masker("data.test_file: null") == "data.test_file: null"  # a swept null is no secret


def test_only_the_last_part_of_a_dotted_key_decides_whether_it_is_secret():
    masker = Masker()
    assert masker.override("credentials.timeout=300000") == "credentials.timeout=300000"
    assert masker.override("tracking.api_token=abcdef") == "tracking.api_token=***"


def test_a_config_without_secrets_gives_an_empty_masker_that_changes_nothing():
    masker = Masker.from_config({"optim": {"lr": 2e-5}, "model": "bert"}, {"TOKENIZERS_PARALLELISM": "false"})
    assert not masker and masker("model bert false") == "model bert false"


def test_params_are_masked_by_value_so_a_copy_of_a_secret_is_masked_too():
    masker = Masker.from_config(CONFIG, {})
    assert masker.values({"copy_of_pw": "hunter2xyz", "note": "uses hunter2xyz", "optim.lr": "2e-05"}) == {
        "copy_of_pw": "***",
        "note": "uses ***",
        "optim.lr": "2e-05",
    }


@pytest.mark.parametrize(
    "override,shown",
    [
        ("+api_token=tok-999999", "+api_token=***"),
        ("tracking.db_password=xy", "tracking.db_password=***"),  # by its key, however short
        ("tracking.password=null", "tracking.password=null"),
        ("tracking.uri=http://a:pw-12345@h", "tracking.uri=http://a:***@h"),
        ("note=hunter2xyz", "note=***"),  # a known secret by value
        ("optim.lr=2e-5", "optim.lr=2e-5"),
    ],
)
def test_an_override_shows_its_value_masked_when_the_key_or_the_value_is_secret(override, shown):
    assert Masker.from_config(CONFIG, {}).override(override) == shown


@pytest.fixture
def root_lines():
    """The lines the root logger's handlers write, formatted (a handler of the root logger, like Hydra's)."""
    lines = []
    install_log_filter(Masker())  # masking nothing, whatever a test before this one left (a filter masks records
    handler = logging.Handler()  # in place: one on a handler before this one would mask its lines too)
    handler.emit = lambda record: lines.append(handler.format(record))
    root = logging.getLogger()
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)
    install_log_filter(Masker())  # the root handlers left masking nothing, for the tests after this one


def test_every_log_line_reaching_the_root_handlers_is_masked_once_filtered(root_lines):
    logging.getLogger("afqmc_exp.test").warning("before: %s", "hunter2xyz")
    install_log_filter(Masker.from_config(CONFIG, {}))
    logging.getLogger("afqmc_exp.test").warning("store %s with %s", "postgresql://team:pg-Secret9@db/x", "hunter2xyz")
    assert root_lines == ["before: hunter2xyz", "store postgresql://team:***@db/x with ***"]


def test_installing_a_masker_again_replaces_the_one_before(root_lines):
    install_log_filter(Masker(["first-secret"]))
    install_log_filter(Masker(["second-secret"]))  # a resumed run: its own config's secrets from here on
    handler = logging.getLogger().handlers[-1]
    assert len([f for f in handler.filters if type(f).__name__ == "_MaskingFilter"]) == 1
    logging.getLogger("afqmc_exp.test").warning("first-secret second-secret")
    assert root_lines == ["first-secret ***"]


def test_a_run_folder_with_secrets_keeps_its_config_files_to_its_owner(tmp_path):
    (tmp_path / ".hydra").mkdir()
    files = [tmp_path / ".hydra" / "config.yaml", tmp_path / ".hydra" / "hydra.yaml", tmp_path / "multirun.yaml"]
    for path in files:
        path.write_text("db_password: hunter2xyz\n")
        path.chmod(0o644)
    hide_run_config(tmp_path, Masker())  # no secrets: left as they were
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}
    hide_run_config(tmp_path, Masker.from_config(CONFIG, {}))
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    assert files[0].read_text() == "db_password: hunter2xyz\n"  # the real value: resume needs it


def test_a_password_with_a_slash_is_found_in_the_config_and_the_environment():
    masker = Masker.from_config({"tracking": {"uri": "postgresql://u:pa/ss-1@db/x"}},
                                {"MLFLOW_TRACKING_URI": "http://a:env/pw-2@h"})  # fmt: skip
    assert masker("pa/ss-1 env/pw-2") == "*** ***"


def test_a_key_that_only_starts_like_a_secret_is_not_one():
    assert Masker.from_config({"tokenizer": "bert-base-chinese", "api_token": "tok-123456"})(
        "bert-base-chinese tok-123456") == "bert-base-chinese ***"  # fmt: skip


@pytest.mark.parametrize("sweep", ["+db_password=xy,longer-secret-1", "+db_password=choice(xy,longer-secret-1)"])
def test_a_swept_secret_is_masked_in_every_line_hydra_prints_for_the_sweep(root_lines, tmp_path, sweep):
    """Hydra's launchers print each job's overrides (``#0 : ...``) before the job, and its masking, starts; a
    secret that short (xy) is masked by its key."""
    from omegaconf import OmegaConf

    from afqmc_exp.tracking.sweep import MlflowSweepCallback

    config = OmegaConf.create({
        "tracking": {"_target_": "afqmc_exp.tracking.mlflow_tracking.MlflowTracking", "enabled": False},
        "trainer": {"metric": "accuracy"},
        "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}, "overrides": {"hydra": [], "task": [sweep, "seed=1,2"]},
                  "runtime": {"choices": {"hydra/sweeper": "basic"}}},
    })  # fmt: skip
    MlflowSweepCallback().on_multirun_start(config)
    launcher = logging.getLogger("hydra._internal.core_plugins.basic_launcher")
    launcher.warning("\t#0 : +db_password=xy seed=1")
    launcher.warning("\t#1 : +db_password=longer-secret-1 seed=2")
    launcher.warning("a job saw longer-secret-1")
    assert root_lines == ["\t#0 : +db_password=*** seed=1", "\t#1 : +db_password=*** seed=2", "a job saw ***"]
