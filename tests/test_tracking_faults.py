"""A tracking store that dies mid-run costs no training and loses nothing; secrets reach no tag, param, artifact
or log. Both against a real `mlflow server` on 127.0.0.1."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import OFFLINE, REPO, SHORT_RUN, TINY_MINILM, free_port, launch, run_command, start_mlflow, stop_mlflow
from helpers.slow_link import slow_link

pytestmark = pytest.mark.slow
FAULTY = [sys.executable, str(REPO / "tests" / "helpers" / "faulty_train.py")]
RUN = [*SHORT_RUN, "trainer.max_steps=10", "trainer.eval_every=5", "trainer.log_every=1", "tracking.experiment=faults"]


def server_store(tmp_path):
    return f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")


def test_a_store_that_dies_mid_run_costs_no_training_and_catches_up_on_resume(tmp_path):
    port = free_port()
    server = start_mlflow("server", *server_store(tmp_path)[:1], tmp_path, port, *server_store(tmp_path)[1:])
    out = tmp_path / "run"
    # the server is killed at step 4 (from inside the run, at a known point); training must go on
    proc = run_command(
        [*FAULTY, "kill-group", "4", *RUN, f"tracking.uri=http://127.0.0.1:{port}", "tracking.drain_seconds=3",
         f"hydra.run.dir={out}"],
        cwd=tmp_path, env={**OFFLINE, "AFQMC_TEST_PGID": str(server.pid)}, timeout=600,
    )  # fmt: skip
    server.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 10 and (out / "best_model" / "model.safetensors").exists()
    assert (out / "dev_predictions.jsonl").exists() and not (out / "last_checkpoint").exists()
    log = (out / "train.log").read_text()
    assert "tracking is behind" in log and "resume=" in log

    server = start_mlflow("server", *server_store(tmp_path)[:1], tmp_path, port, *server_store(tmp_path)[1:])
    try:
        catch_ups = []
        for attempt in range(5):  # one record taking over drain_seconds=3 (a loaded machine) ends a catch-up: said
            folder = tmp_path / f"catch_up{attempt}"
            again = run_command([sys.executable, str(REPO / "train.py"), f"resume={out}", f"hydra.run.dir={folder}"],
                                cwd=tmp_path, timeout=600)  # fmt: skip
            said = again.stdout + again.stderr
            catch_ups.append(said)
            assert again.returncode == 0, again.stderr[-3000:]
            assert "this run finished" in said and "nothing to resume" in said
            if "still wait for the store" not in said:
                break
        from mlflow import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}")
        run = client.get_run(result["mlflow_run_id"])
        assert run.info.status == "FINISHED", "\n---\n".join([proc.stderr[-3000:], *catch_ups])[-8000:]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 11))
        assert [m.step for m in client.get_metric_history(run.info.run_id, "dev/f1")] == [5, 10]
        assert "final/dev_f1" in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "dev_predictions.jsonl", "plots", "hydra", "train.log"} <= artifacts
    finally:
        stop_mlflow(server)


def test_weights_that_take_longer_to_upload_than_the_wait_reach_the_store_and_close_the_run(tmp_path):
    """On a slow link the best weights take longer to upload than ``drain_seconds`` (BERT-base's 400 MB at 5 MB/s:
    80 s against the default 60). The end of the run waits while the upload moves; before, it was cut at the end
    and at every catch-up, and the run never got its weights nor closed."""
    from mlflow import MlflowClient

    port = free_port()
    server = start_mlflow("server", *server_store(tmp_path)[:1], tmp_path, port, *server_store(tmp_path)[1:])
    weights = (TINY_MINILM / "model.safetensors").stat().st_size
    out = tmp_path / "run"
    try:
        with slow_link(port, rate=weights / 5) as link:  # 5 s for the weights, against a wait of 1 s
            proc = run_command(
                [sys.executable, str(REPO / "train.py"), *RUN, "tracking.log_weights=true",
                 f"tracking.uri=http://127.0.0.1:{link}", "tracking.drain_seconds=1", f"hydra.run.dir={out}"],
                cwd=tmp_path, timeout=600,
            )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        said = proc.stdout + proc.stderr
        assert "tracking is behind" not in said and "still being sent to the MLflow store" in said, said[-3000:]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        run = client.get_run(json.loads((out / "result.json").read_text())["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        sizes = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "best_model")}
        assert sizes["best_model/model.safetensors"] == (out / "best_model" / "model.safetensors").stat().st_size
    finally:
        stop_mlflow(server)


def test_secrets_reach_no_tag_param_artifact_log_or_console(tmp_path):
    """Secrets by key, inside a URI, copied by interpolation, and from the environment: masked by value
    everywhere the run writes for others; the run folder's own config files are its owner's only."""
    password, token, db, env = "s3cr3tPW42", "tok-9f8e7d6c5b", "hunter2xyz", "envPW-77aa"
    port = free_port()
    server = start_mlflow("server", *server_store(tmp_path)[:1], tmp_path, port, *server_store(tmp_path)[1:])
    try:
        uri = f"http://alice:{password}@127.0.0.1:{port}"
        out = tmp_path / "run"
        proc = run_command(
            [sys.executable, str(REPO / "train.py"), *RUN, f"+api_token={token}", f"+db_password={db}",
             "+copy_of_pw=${db_password}", "+mlpw=${oc.env:MLFLOW_TRACKING_PASSWORD}", f"hydra.run.dir={out}"],
            cwd=tmp_path, env={**OFFLINE, "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_PASSWORD": env}, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert token in (out / ".hydra" / "config.yaml").read_text()  # the folder keeps it: resume needs it
        from mlflow import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}")
        run = client.get_run((out / "mlflow_run_id").read_text().strip())
        texts = {"console": proc.stdout + proc.stderr, "train.log": (out / "train.log").read_text()}
        texts.update({f"param {k}": v for k, v in run.data.params.items()})
        texts.update({f"tag {k}": v for k, v in run.data.tags.items()})
        with tempfile.TemporaryDirectory() as folder:
            for path in Path(client.download_artifacts(run.info.run_id, "", folder)).rglob("*"):
                if path.is_file() and path.suffix in (".yaml", ".json", ".jsonl", ".log", ".txt"):
                    texts[f"artifact {path.name}"] = path.read_text(errors="replace")
        assert "artifact config.yaml" in texts and "artifact overrides.yaml" in texts and "artifact hydra.yaml" in texts
        leaks = [where for where, text in texts.items() if any(s in text for s in (password, token, db, env))]
        assert leaks == []
        assert run.data.params["copy_of_pw"] == run.data.params["mlpw"] == "***"
        assert {oct(p.stat().st_mode & 0o777) for p in (out / ".hydra").glob("*.yaml")} == {"0o600"}
        assert "***" in run.data.params["api_token"] and "***" in run.data.tags["hydra.overrides"]
    finally:
        stop_mlflow(server)


def test_a_store_that_cannot_be_used_is_one_line_before_anything_runs(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "broken.db").write_bytes(b"SQLite format 3\0" + os.urandom(3000))
    cases = {
        "sqlit:///x.db": "unknown scheme 'sqlit'",
        "http//127.0.0.1:5000": "not a URI",
        f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}": "cannot be written",
        f"sqlite:///{tmp_path / 'broken.db'}": "is damaged",
    }
    for uri, message in cases.items():
        proc = run_command(
            [sys.executable, str(REPO / "train.py"), *RUN, f"tracking.uri={uri}"], cwd=tmp_path, timeout=300
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert lines[-2:][0].startswith("error: invalid config:") and len(lines) <= 3, lines
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "x.db").exists()


def test_a_server_store_that_is_down_is_one_line_at_once_and_leaves_no_folder(tmp_path):
    """A forgotten ``mlflow server``: refused in one line, not after MLflow's four minutes of retries and a
    traceback, for a new run and for a rerun of a logged one."""
    uri = f"http://127.0.0.1:{free_port()}"
    for given in (
        [*RUN, f"hydra.run.dir={tmp_path / 'run'}"],
        ["rerun=" + "a" * 32, f"hydra.run.dir={tmp_path / 'again'}"],
    ):
        proc = run_command([sys.executable, str(REPO / "train.py"), f"tracking.uri={uri}", *given], cwd=tmp_path,
                           timeout=120)  # fmt: skip
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert last.startswith("error: ") and f"{uri}: no MLflow server answers (connection refused)" in last, last
    assert not (tmp_path / "run").exists() and not (tmp_path / "again").exists()


def test_two_processes_resuming_the_same_run_the_second_is_refused(tmp_path):
    """A duplicated requeue: the first resumer holds the run folder (paused at a known step); the second is
    refused with one line and logs nothing; the first then finishes with every step logged once."""
    out, gate = tmp_path / "run", tmp_path / "gate"
    killed = run_command([*FAULTY, "mid-write", "2", *RUN, "trainer.checkpoint_every=3",
                          "trainer.checkpoint_in_background=true", f"hydra.run.dir={out}"], cwd=tmp_path)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    env = {**OFFLINE, "AFQMC_TEST_GATE": str(gate)}
    first = launch([*FAULTY, "gate", "5", f"resume={out}", f"hydra.run.dir={tmp_path / 'r1'}"], cwd=tmp_path, env=env,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    waiting = Path(f"{gate}.waiting")
    for _ in range(3000):
        if waiting.exists() or first.poll() is not None:
            break
        __import__("time").sleep(0.1)
    assert waiting.exists(), first.communicate()[1][-2000:]
    second = run_command([sys.executable, str(REPO / "train.py"), f"resume={out}",
                          f"hydra.run.dir={tmp_path / 'r2'}"], cwd=tmp_path)  # fmt: skip
    assert second.returncode == 1 and "another process is running this run" in second.stderr, second.stderr[-2000:]
    gate.touch()
    assert first.wait(timeout=600) == 0, first.communicate()[1][-3000:]
    from helpers import mlflow_runs

    client, runs = mlflow_runs(tmp_path, "faults")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == list(range(1, 11))
    log = (out / "train.log").read_text()  # the run's own log holds both processes' lines
    first_process, resumed = log.index("MLflow run minilm"), log.index("with its saved config")
    assert first_process < resumed and "reopened (metrics logged through step" in log[resumed:]
