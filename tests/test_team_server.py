"""The team setup for real: an `mlflow server` on a PostgreSQL backend, a 2-job sweep logging to it
through MLFLOW_TRACKING_URI, everything read back through the MLflow client. `.ci/run` starts PostgreSQL
and sets AFQMC_TEST_POSTGRES_URI; without it the test fails under --slow (see conftest.require)."""

import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from helpers import AFQMC, REPO, mlflow_service, require, run_command

POSTGRES = os.environ.get("AFQMC_TEST_POSTGRES_URI")
pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path, request):
    require(request, bool(POSTGRES), "needs PostgreSQL: set AFQMC_TEST_POSTGRES_URI (.ci/run starts it and does)")
    with mlflow_service("server", POSTGRES, tmp_path, "--artifacts-destination", str(tmp_path / "artifacts")) as url:
        yield url


def test_a_sweep_logs_to_a_shared_server_with_a_database_backend(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    experiment = f"team-{uuid.uuid4().hex[:8]}"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--multirun",
        "model=minilm",
        f"data.dir={AFQMC}",
        "data.test_file=null",
        "data.max_length=48",
        "data.dev_limit=100",
        "trainer.max_steps=2",
        "trainer.device=cpu",
        "trainer.progress_bar=false",
        f"tracking.experiment={experiment}",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": mlflow_server}
    proc = run_command(cmd, cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the default local store

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 2 and parent[0].info.status == "FINISHED"
    for child in children:
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "dev/accuracy")] == [2]
        names = {a.path for a in client.list_artifacts(child.info.run_id, "best_model")}
        assert "best_model/model.safetensors" in names
        result = json.loads(
            Path(client.download_artifacts(child.info.run_id, "result.json", str(tmp_path))).read_text()
        )
        assert result["mlflow_run_id"] == child.info.run_id
