"""Shared test helpers: the shared AFQMC data, Hydra composition, and real short trainings into tmp_path."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # every test names its own store

REPO = Path(__file__).resolve().parent.parent
AFQMC = Path(os.environ.get("AFQMC_DATA", REPO.parent / "shared" / "data" / "afqmc"))


@pytest.fixture
def afqmc_dir() -> Path:
    if not (AFQMC / "train.json").exists():
        pytest.fail(f"AFQMC data not found at {AFQMC}; set AFQMC_DATA to the folder with train/dev/test.json")
    return AFQMC


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; a test that changes its precision starts and ends afresh."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def compose(overrides: list[str], tmp_path: Path | None = None):
    """The train config as train.py would see it, with Hydra's runtime config set (output dir in tmp_path)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import afqmc_exp  # noqa: F401  (resolvers)

    extra = []
    if tmp_path is not None:
        extra = [f"hydra.run.dir={tmp_path / 'run'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides + extra, return_hydra_config=True)
    with open_dict(cfg):  # what Hydra's launcher fills in for a real run
        cfg.hydra.runtime.output_dir = cfg.hydra.run.dir
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train(overrides: list[str], tmp_path: Path) -> float:
    """A real training run, in-process, as `python train.py <overrides>` would do it."""
    from afqmc_exp.cli import train_from_config

    return train_from_config(compose(overrides, tmp_path))


def mlflow_runs(tmp_path: Path, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow end-to-end tests (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def mlflow_service(command: str, store: str, cwd: Path, *extra: str):
    """`mlflow ui|server --backend-store-uri STORE` on a free loopback port, waited for; yields its URL."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = cwd / f"mlflow-{command}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), command, "--backend-store-uri", store,
                                 *extra, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, f"mlflow {command} did not start"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
