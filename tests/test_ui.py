"""The results as a person sees them: after a short sweep, a real `mlflow ui` on the project's store
serves the parent run, its children, their metrics and the plots through its REST API, and headless
Chromium shows the sweep on the experiment page (a screenshot is kept in the test's tmp folder)."""

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO, SHORT_RUN, mlflow_service, require, run_command

pytestmark = pytest.mark.slow


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--multirun",
        *SHORT_RUN,
        "data.dev_limit=80",
        "trainer.max_steps=2",
        "optim.lr=1e-5,3e-5",
        f"hydra.sweep.dir={tmp / 'sweep'}",
    ]
    proc = run_command(cmd, cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with mlflow_service("ui", "sqlite:///mlflow.db", tmp, jobs=True) as url:  # exactly the README's command
        yield url, tmp


def api(url: str, endpoint: str, **query):
    return json.loads(get(f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"))


def searched(url: str, experiment_id: str) -> list[dict]:
    """The experiment's runs as the REST API returns them."""
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/runs/search",
        method="POST",
        data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=30).read())["runs"]


def run_ids(url: str, experiment_id: str) -> list[str]:
    return [r["info"]["run_id"] for r in searched(url, experiment_id)]


def parent_id(url: str, experiment_id: str) -> str:
    (parent,) = [r["info"]["run_id"] for r in searched(url, experiment_id)
                 if "mlflow.parentRunId" not in {t["key"] for t in r["data"].get("tags", [])}]  # fmt: skip
    return parent


def test_rest_api_shows_the_sweep_its_runs_metrics_and_plots(ui):
    url, _ = ui
    experiment = api(url, "experiments/get-by-name", experiment_name="afqmc")["experiment"]
    runs = searched(url, experiment["experiment_id"])
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" not in t]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r, t in zip(runs, tags, strict=True) if t.get("mlflow.parentRunId") == parent_id]
    assert len(children) == 2
    assert "best/dev_accuracy" in {m["key"] for m in parents[0]["data"]["metrics"]}
    for child in children:
        metrics = {m["key"] for m in child["data"]["metrics"]}
        assert {"dev/f1", "dev/accuracy", "dev/auc", "train/loss", "final/dev_f1"} <= metrics
        files = api(url, "artifacts/list", run_id=child["info"]["run_id"], path="plots")["files"]
        assert {f["path"] for f in files} == {"plots/confusion_matrix.png", "plots/pr_curve.png", "plots/roc_curve.png"}
        query = urllib.parse.urlencode({"path": "plots/roc_curve.png", "run_uuid": child["info"]["run_id"]})
        png = get(f"{url}/get-artifact?{query}")
        assert png[:4] == b"\x89PNG"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_chromium_shows_the_sweep_and_its_runs_with_their_metric(ui, request):
    require(request, CHROMIUM is not None, "needs Debian's chromium (.ci/run installs it)")
    url, tmp = ui
    experiment_id = api(url, "experiments/get-by-name", experiment_name="afqmc")["experiment"]["experiment_id"]
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp / 'chromium'}",
        "--window-size=1600,1000",
        "--virtual-time-budget=30000",
    ]

    def visit(page: str, shot: Path, rendered: str = "</table>|About this run") -> str:
        subprocess.run(flags + [f"--screenshot={shot}", page], capture_output=True, timeout=180)
        assert shot.exists() and shot.read_bytes()[:4] == b"\x89PNG"
        for _ in range(3):  # the page's scripts may not have drawn it by the end of the first time budget
            dom = subprocess.run(flags + ["--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
            if re.search(rendered, dom):
                break
        return dom

    def linked(page: str) -> set[str]:  # the runs a page links to, by id (whatever MLflow's wording around them)
        return set(re.findall(rf"#/experiments/{experiment_id}/runs/([0-9a-f]{{32}})", page))

    # the experiment's runs: the sweep is one row, its jobs folded under it (the REST API's runs, no others)
    runs_page = visit(f"{url}/#/experiments/{experiment_id}/runs", tmp / "experiment_runs.png")
    parent, every = parent_id(url, experiment_id), set(run_ids(url, experiment_id))
    assert parent in linked(runs_page) <= every and len(every) == 3 and "sweep " in runs_page
    sweep_page = visit(f"{url}/#/experiments/{experiment_id}/runs/{parent}", tmp / "sweep_run.png")
    assert every - {parent} <= linked(sweep_page)  # the sweep's page links both its jobs
    assert "minilm-afqmc-lr1e-05-bs16-s42" in sweep_page and "minilm-afqmc-lr3e-05-bs16-s42" in sweep_page
    assert "best/dev_accuracy" in sweep_page
    # a job's page says where it came from and what it trained on; the sweep's row too, in the runs table
    child = re.search(r'href="#/experiments/\d+/runs/([0-9a-f]{32})"[^>]*>minilm-afqmc-lr1e-05', sweep_page).group(1)
    child_page = visit(f"{url}/#/experiments/{experiment_id}/runs/{child}", tmp / "job_run.png")
    assert "train.py" in child_page and "afqmc/train.json (" in child_page  # the dataset with its digest
    assert "afqmc/train.json" in runs_page and "train.py" in runs_page
    # the view each run's last line links: the metric, model and task are columns there, not on the default page
    view = visit(f"{url}/#/experiments/{experiment_id}/runs?viewStateShareKey=afqmc", tmp / "runs_view.png",
                 rendered="best/dev_accuracy")  # fmt: skip
    assert "best/dev_accuracy" in view and "best/dev_accuracy" not in runs_page
    if os.environ.get("AFQMC_SCREENSHOT_DIR"):  # keep the screenshots past the test's tmp folder
        for name in ("experiment_runs.png", "sweep_run.png", "job_run.png", "runs_view.png"):
            shutil.copy(tmp / name, Path(os.environ["AFQMC_SCREENSHOT_DIR"]) / name)
