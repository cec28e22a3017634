"""The team setup for real: an `mlflow server` on a PostgreSQL backend, and one Optuna search on a PostgreSQL
storage run by two workers at once (two terminals, two machines, two SLURM array tasks), logging to that server
through MLFLOW_TRACKING_URI; everything read back through the MLflow client and Optuna. `.ci/run` starts PostgreSQL
and sets AFQMC_TEST_POSTGRES_URI and AFQMC_TEST_OPTUNA_URI; without them the test fails under --slow (see
conftest.require)."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import alive

from helpers import AFQMC, REPO, launch, mlflow_service, require

POSTGRES = os.environ.get("AFQMC_TEST_POSTGRES_URI")
OPTUNA = os.environ.get("AFQMC_TEST_OPTUNA_URI")  # another database: Optuna's tables and MLflow's would collide
pytestmark = pytest.mark.slow


def storage_in_step(uri: str, barrier, answers) -> None:
    """One worker's first contact with the search's storage, at the same moment as the others'."""
    from hydra_plugins.afqmc_optuna_sweeper.optuna_sweeper import rdb_storage

    barrier.wait()
    try:
        rdb_storage(uri)
        answers.put("ok")
    except Exception as error:  # (reported to the test, which names it)
        answers.put(f"{type(error).__name__}: {str(error).splitlines()[0]}")


def left_by_killed_sessions(connection) -> list[str]:
    """The schemas this test made in a session that was killed before dropping them (``race_<pid>_<hex>``, that
    process gone; the database is this machine's, as .ci/run starts it)."""
    import sqlalchemy

    names = connection.execute(sqlalchemy.text("SELECT schema_name FROM information_schema.schemata")).scalars()
    made = [name for name in names if re.fullmatch(r"race_\d+_[0-9a-f]{8}", name)]
    return [name for name in made if not alive(int(name.split("_")[1]))]


def test_workers_that_meet_a_new_optuna_database_at_once_all_get_its_storage(request):
    """Four workers create Optuna's tables in one new PostgreSQL schema at the same moment: without tries again,
    two of four fail on a type another one created (optuna#1092)."""
    import multiprocessing

    import sqlalchemy

    require(request, bool(OPTUNA), "needs PostgreSQL: set AFQMC_TEST_OPTUNA_URI (.ci/run starts it and does)")
    schema, engine = f"race_{os.getpid()}_{uuid.uuid4().hex[:8]}", sqlalchemy.create_engine(OPTUNA)
    with engine.begin() as connection:
        for left in left_by_killed_sessions(connection):  # its finally never ran
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {left} CASCADE"))
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        spawn = multiprocessing.get_context("spawn")
        barrier, answers = spawn.Barrier(4), spawn.Queue()
        uri = f"{OPTUNA}?options=-csearch_path%3D{schema}"  # a new, empty database as far as Optuna can tell
        workers = [spawn.Process(target=storage_in_step, args=(uri, barrier, answers)) for _ in range(4)]
        for worker in workers:
            worker.start()
        said = [answers.get(timeout=300) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        assert said == ["ok"] * 4, said
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def mlflow_server(tmp_path, request):
    needs = "needs PostgreSQL: set AFQMC_TEST_POSTGRES_URI and AFQMC_TEST_OPTUNA_URI (.ci/run starts it and does)"
    require(request, bool(POSTGRES and OPTUNA), needs)
    with mlflow_service("server", POSTGRES, tmp_path, "--artifacts-destination", str(tmp_path / "artifacts")) as url:
        yield url


def test_two_workers_share_one_search_on_postgresql_and_log_to_a_shared_server(tmp_path, mlflow_server):
    import optuna
    from mlflow import MlflowClient

    experiment = study = f"team-{uuid.uuid4().hex[:8]}"  # the databases outlive the test: names of its own
    cmd = [sys.executable, str(REPO / "train.py"), "model=minilm", f"data.dir={AFQMC}", "data.test_file=null",
           "data.max_length=48", "data.dev_limit=100", "trainer.max_steps=2", "trainer.device=cpu",
           "trainer.progress_bar=false", f"tracking.experiment={experiment}", "hparams_search=afqmc_optuna",
           f"hydra.sweeper.storage={OPTUNA}", f"hydra.sweeper.study_name={study}",
           "hydra.sweeper.n_trials=2"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": mlflow_server}
    workers = [launch([*cmd, f"hydra.sweep.dir={tmp_path / f'worker{i}'}"], cwd=tmp_path, env=env,
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in (1, 2)]  # fmt: skip
    said = []
    for worker in workers:
        said.append(worker.communicate(timeout=900)[1])
        assert worker.returncode == 0, said[-1][-3000:]
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the default local store
    trials = [t for t in optuna.load_study(study_name=study, storage=OPTUNA).trials
              if not t.user_attrs.get("afqmc.over_total")]  # fmt: skip
    logs = "".join(p.read_text()[-3000:] for p in tmp_path.glob("worker*/*/train.log")) + "".join(said)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], logs  # the study's total, between both workers

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 2 and parent[0].info.status == "FINISHED"
    assert parent[0].data.tags["sweep.study"] == study and parent[0].data.tags["sweep.jobs"] == "2"
    for child in children:
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "dev/accuracy")] == [2]
        names = {a.path for a in client.list_artifacts(child.info.run_id, "best_model")}
        assert "best_model/model.safetensors" in names
        result = json.loads(
            Path(client.download_artifacts(child.info.run_id, "result.json", str(tmp_path))).read_text()
        )
        assert result["mlflow_run_id"] == child.info.run_id
