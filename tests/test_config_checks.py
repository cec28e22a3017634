"""The config checks (``commands/config_checks.py``): bad overrides give one clear line each, before any model loads or
MLflow run opens."""

import os
import sys

import pytest

from afqmc_exp.commands.config_checks import ConfigError, validate
from helpers import AFQMC, REPO, compose, run_command

BASE = ["model=minilm", f"data.dir={AFQMC}"]
BAD = [
    ("lr zero", ["optim.lr=0"], r"optim.lr=0: must be > 0"),
    ("lr negative", ["optim.lr=-1e-5"], r"optim.lr=-1e-05: must be > 0"),
    ("lr not a number", ["optim.lr=fast"], r"optim.lr='fast': expected float"),
    ("epochs zero", ["trainer.epochs=0"], r"trainer.epochs=0: must be >= 1"),
    ("epochs a string", ["trainer.epochs=three"], r"trainer.epochs='three': expected int"),
    ("batch size as float", ["data.batch_size=16.5"], r"data.batch_size=16.5: expected int"),
    ("max_length over the model", ["data.max_length=1024"], r"data.max_length=1024: the model takes at most 512"),
    ("missing data.dir", ["data.dir=null"], r"data.dir=None: must name the folder"),
    ("no model.name_or_path key", ["~model.name_or_path"], r"model.name_or_path=None: must name a Hub id"),
    ("no data.dir key", ["~data.dir"], r"data.dir: missing; afqmc_exp.data.PairData needs it \(set data.dir=...\)"),
    ("warmup ratio", ["scheduler.warmup_ratio=1.5"], r"scheduler.warmup_ratio=1.5: must be in \[0, 1\)"),
    ("unknown key", ["+optim.lrr=1e-5"], r"optim.lrr: unknown key for afqmc_exp.training.optim.adamw; known keys: .*lr"),  # noqa: E501
    ("fgm epsilon", ["regularizer=fgm", "regularizer.epsilon=0"], r"regularizer.epsilon=0: must be > 0"),
    ("ema decay", ["trainer.ema_decay=1.5"], r"trainer.ema_decay=1.5: must be in \(0, 1\)"),
    ("threshold", ["trainer.threshold=best"], r"trainer.threshold='best': expected float, or one of tune"),
    ("fold out of range", ["data.folds=5", "data.fold=5"], r"data.fold=5: must be in 0..4"),
    ("auto or a number", ["data.eval_batch_size=big"], r"data.eval_batch_size='big': expected int, or one of auto"),
    ("model named nowhere", ["model=pretrained"], r"model.name_or_path='\?\?\?': must name a Hub id or a local folder"),
    ("f1 of three labels", ["data=cmnli", "trainer.metric=f1"],
     r"trainer.metric=f1: needs two labels, and the task has 3"),
    ("threshold of three labels", ["data=cmnli", "trainer.threshold=tune"],
     r"trainer.threshold=tune: a threshold applies to two labels only"),
    ("a label kept and dropped", ["data.drop_labels=[1]"], r"data.drop_labels: '1' is also one of data.labels"),
    ("one label", ["data.labels=[0]"], r"data.labels=\[0\]: must list at least two different labels"),
    ("no first column", ["data.fields.text_a=null"], r"data.fields.text_a: must name the column of the first sentence"),
    ("train limit zero", ["data.train_limit=0"], r"data.train_limit=0: must be >= 1, or null"),
    ("train limit negative", ["data.train_limit=-40"], r"data.train_limit=-40: must be >= 1, or null"),
    ("extra dev without a file", ["data.extra_dev={x: {format: tsv}}"], r"data.extra_dev.x: must be \{file: "),
    ("lr infinite", ["optim.lr=inf"], r"optim.lr=inf: must be > 0"),
    ("weight decay infinite", ["optim.weight_decay=inf"], r"optim.weight_decay=inf: must be >= 0 and finite"),
    ("seed negative", ["seed=-1"], r"seed=-1: must be an integer in \[0, 2\*\*32\)"),
    ("seed too large", ["seed=8589934592"], r"seed=8589934592: must be an integer in \[0, 2\*\*32\)"),
    ("betas out of range", ["optim.betas=[2,0.5]"], r"optim.betas=\[2, 0.5\]: must be two numbers in \[0, 1\)"),
    ("an unset variable", ["optim.lr=${oc.env:AFQMC_TEST_UNSET}"],
     r"invalid config: optim.lr: .*Environment variable 'AFQMC_TEST_UNSET' not found"),
    ("unknown format", ["data.format=xlsx"],
     r"data.format='xlsx': must be one of jsonl, tsv, csv, json_array, parquet"),
]  # fmt: skip
# options with a fixed set of values (a Literal annotation on their _target_): a bad value is named with the choices
CHOICES = [
    ("trainer.metric", "acc", "accuracy, macro_f1, f1, auc, loss"),
    ("trainer.device", "gpu0", "auto, cpu"),
    ("trainer.mixed_precision", "fp8", "no, bf16, fp16"),
    ("trainer.eval_precision", "int8", "auto, fp32, bf16"),
    ("scheduler.name", "step", "linear, cosine, constant"),
    ("optim.implementation", "apex", "auto, fused, foreach, loop"),
    ("model.architecture", "roberta", "auto, bert"),
    ("trainer.compile", "yes", "no, default, reduce-overhead, max-autotune"),
    ("trainer.compile_scope", "encoder", "layers, model"),
]


@pytest.mark.parametrize("overrides,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_overrides_are_named_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(BASE + overrides))


@pytest.mark.parametrize("key,value,choices", CHOICES, ids=[c[0] for c in CHOICES])
def test_a_bad_choice_exits_with_one_line_and_leaves_no_run(tmp_path, key, value, choices):
    """Checked before any model loads or MLflow run opens (these used to fail only inside their factory)."""
    from afqmc_exp.commands.train import train_from_config

    with pytest.raises(SystemExit) as stop:
        train_from_config(compose(BASE + [f"{key}={value}"], tmp_path))
    assert str(stop.value) == f"error: invalid config: {key}={value!r}: must be one of {choices}"
    assert not (tmp_path / "mlflow.db").exists()


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        validate(compose(BASE + ["optim.lr=0", "trainer.epochs=0"]))
    assert str(err.value).count("\n  ") == 2


@pytest.mark.parametrize("preset", ["experiment=quickstart", "debug=fast", "debug=overfit", "experiment=clue_roberta"])
def test_shipped_configs_are_valid(preset):
    validate(compose(BASE + [preset]))


def test_unknown_option_in_a_group_is_named_by_hydra():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="model/bret"):
        compose(["model=bret"])


@pytest.mark.slow  # starts processes
def test_cli_prints_one_error_block_without_traceback_and_opens_no_run(tmp_path):
    proc = run_command([sys.executable, str(REPO / "train.py"), *BASE, "optim.lr=-1", "trainer.epochs=0"],
                       cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 1
    assert (
        "error: invalid config:" in proc.stderr and "optim.lr=-1" in proc.stderr and "trainer.epochs=0" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["optim.lrr=1"], ["error: optim.lrr: no such key (did you mean optim.lr?)"]),
        (
            ["--multirun", "optim.lr=1e-5,2e-5", "trainer.epoch=2"],
            ["error: trainer.epoch: no such key (did you mean trainer.epochs?)"],
        ),
        (["data.dir=/nonexistent"], ["error: /nonexistent: afqmc files"]),  # refused once Hydra ran: its folder goes
    ],
    ids=["typo", "typo in a sweep", "missing data"],
)
def test_a_refused_command_is_one_line_and_leaves_no_folder(tmp_path, overrides, expected):
    proc = run_command([sys.executable, str(REPO / "train.py"), *overrides, "model=minilm"], cwd=tmp_path, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(expected[0]), proc.stderr[-2000:]
    assert "+optim" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------------------------ model folders and stores
def test_a_model_folder_without_tokenizer_files_is_refused_before_anything_runs(tmp_path):
    import shutil

    from afqmc_exp.model import packaged_minilm_path

    folder = tmp_path / "weights-only"
    shutil.copytree(
        packaged_minilm_path(), folder, ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt", "special*")
    )
    with pytest.raises(ConfigError, match=rf"model.name_or_path={folder}: .* has weights but no tokenizer files"):
        validate(compose(BASE + [f"model.name_or_path={folder}"]))


@pytest.mark.parametrize(
    "name,message",
    [("/nonexistent/model", "no such folder"), ("./not/here", "no such folder")],
)
def test_a_missing_model_folder_is_one_line(name, message):
    with pytest.raises(ConfigError, match=rf"model.name_or_path={name}: {message}"):
        validate(compose(BASE + [f"model.name_or_path={name}"]))


def test_a_tokenizer_that_does_not_belong_to_the_model_is_refused(tmp_path):
    from afqmc_exp.model import ModelError, check_vocabulary
    from helpers import tiny_pretrained

    tokenizer = tiny_pretrained(tmp_path).tokenizer  # 40-odd tokens
    with pytest.raises(ModelError, match=r"its tokenizer has \d+ tokens but the model expects 30522"):
        check_vocabulary(tokenizer, type("Config", (), {"vocab_size": 30522}), "/models/x")
    check_vocabulary(tokenizer, type("Config", (), {"vocab_size": len(tokenizer)}), "/models/x")


def test_resume_and_rerun_together_are_refused(tmp_path):
    from afqmc_exp.commands.train import train_from_config

    with pytest.raises(SystemExit, match="resume= and rerun= together"):
        train_from_config(compose(BASE + ["resume=somewhere", "rerun=abc123"], tmp_path))


# ------------------------------------------------------------------------------------ Hub ids
@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def hub(monkeypatch):
    """A loopback stand-in for the Hub: HEAD of an existing model's config.json redirects, others are 404."""
    import http.server
    import threading

    import huggingface_hub.constants

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(302 if self.path.startswith("/known/model/") else 404)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    server.shutdown()


def test_a_hub_id_neither_cached_nor_allowed_online_is_one_line_with_the_ways_out(empty_hub_cache, monkeypatch):
    from afqmc_exp.hub import hub_problems

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (problem,) = hub_problems("bert-base-chinese")
    assert problem.startswith(
        f"model.name_or_path=bert-base-chinese: not in the Hugging Face cache ({empty_hub_cache})"
    )
    assert "HF_HUB_OFFLINE=1" in problem and "model=minilm" in problem and "local folder" in problem


def test_a_cached_hub_id_is_accepted_offline(empty_hub_cache, monkeypatch):
    from afqmc_exp.hub import hub_problems

    snapshot = empty_hub_cache / "models--org--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (empty_hub_cache / "models--org--cached" / "refs").mkdir()
    (empty_hub_cache / "models--org--cached" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_problems("org/cached") == []


def test_online_the_hub_is_asked_once_without_retries(empty_hub_cache, hub):
    from afqmc_exp.hub import hub_problems

    assert hub_problems("known/model") == []
    (problem,) = hub_problems("bert-base-chinesee")
    assert "bert-base-chinesee: the Hub (http://127.0.0.1:" in problem and "has no such model" in problem


def test_an_unreachable_hub_is_one_line_at_once(empty_hub_cache, monkeypatch):
    import time

    import huggingface_hub.constants

    from afqmc_exp.hub import hub_problems
    from helpers import free_port

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nobody listens
    started = time.monotonic()
    (problem,) = hub_problems("bert-base-chinese")
    assert "cannot be reached (" in problem and "model=minilm" in problem
    assert time.monotonic() - started < 20  # one attempt, not huggingface_hub's five retries with back-off


@pytest.mark.slow  # starts processes
def test_the_default_model_offline_and_uncached_leaves_no_folder_and_no_run(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run_command([sys.executable, str(REPO / "train.py"), f"data.dir={AFQMC}", "debug=fast"], cwd=tmp_path,
                       env=env, timeout=300)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: invalid config: model.name_or_path=bert-base-chinese: not in the Hugging Face")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow  # starts processes
def test_an_option_no_group_has_gets_the_closest_one_and_no_folder(tmp_path):
    proc = run_command([sys.executable, str(REPO / "train.py"), "model=robreta"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: model=robreta: no such option (did you mean model=roberta?); the options of model: bert, minilm, "
        "pretrained, roberta"
    ), proc.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # starts processes
def test_help_leads_with_a_short_usage_the_groups_and_the_keys_most_changed(tmp_path):
    proc = run_command([sys.executable, str(REPO / "train.py"), "--help"], cwd=tmp_path, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0].startswith("usage: python train.py [group=option ...]")
    assert "data: afqmc, bq, chip_sts, cmnli, lcqmc, ocnli, pairs, pawsx" in lines and len(lines) < 40
    assert any(line.strip().startswith("optim.lr ") for line in lines) and "--cfg job" in proc.stdout


def test_a_model_folder_of_pickled_weights_is_refused_before_anything_loads(tmp_path):
    import shutil

    from afqmc_exp.model import packaged_minilm_path

    folder = tmp_path / "pickled"
    shutil.copytree(packaged_minilm_path(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(ConfigError, match=rf"model.name_or_path={folder}: .* only as a pickle .* can run code"):
        validate(compose(BASE + [f"model.name_or_path={folder}"]))


@pytest.mark.slow  # starts processes
def test_a_secret_in_a_refused_value_is_masked(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MY_SECRET": "notafloat-hush"}
    proc = run_command([sys.executable, str(REPO / "train.py"), *BASE, "optim.lr=${oc.env:MY_SECRET}"], cwd=tmp_path,
                       env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and "optim.lr='***': expected float" in proc.stderr, proc.stderr[-2000:]
    assert "hush" not in proc.stderr


def test_a_config_is_checked_once_per_process_and_a_bad_one_every_time(tmp_path, monkeypatch):
    """The train command checks the command line's config, then Hydra's composition of the same: the store's
    check (and the Hub's answer) once. A refused config is refused again, and another config is checked anew."""
    from afqmc_exp.commands import config_checks

    asked = []
    monkeypatch.setattr(config_checks, "store_problems", lambda uri: asked.append(uri) or [])
    store = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in range(2):  # composed twice, as the train command has it
        validate(compose([*BASE, store]))
    assert len(asked) == 1
    validate(compose([*BASE, store, "seed=7"]))
    assert len(asked) == 2
    for _ in range(2):
        with pytest.raises(ConfigError, match="optim.lr"):
            validate(compose([*BASE, store, "optim.lr=-1"]))
