"""The project as users get it: a wheel installed outside the checkout trains with `afqmc-train`; weights logged
to a server are downloaded once and then read from the cache; a URI that names nothing is one line."""

import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from helpers import OFFLINE, REPO, SHORT_RUN, free_port, run_command, start_mlflow, stop_mlflow

pytestmark = pytest.mark.slow


def test_the_wheel_installs_and_trains_outside_the_checkout(tmp_path):
    built = run_command([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                         tmp_path / "dist", REPO], cwd=tmp_path, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("afqmc_exp-*.whl"))
    # a fresh environment that sees this one's dependencies (a .pth line) but gets afqmc-exp only from the wheel
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # installed into by this environment's pip (--python): no ensurepip
    python = env_dir / "bin" / "python"
    site = run_command([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run_command([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                             wheel], timeout=600)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run_command(
        [python, "-c", "import afqmc_exp.commands.train as c; print(c.__file__, c.config_dir())"], cwd=work
    )
    assert str(env_dir) in where.stdout and str(REPO) not in where.stdout, where.stdout + where.stderr
    trained = run_command([env_dir / "bin" / "afqmc-train", "experiment=quickstart", "trainer.max_steps=4",
                           "tracking.log_weights=false"], cwd=work, timeout=900)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert list(work.glob("outputs/*/*/result.json")) and (work / "mlflow.db").exists()
    assert list(work.glob("outputs/*/*/train.log"))  # the log is train.log whichever entry point ran
    for command in ("afqmc-evaluate", "afqmc-predict", "afqmc-report", "afqmc-disk"):
        helped = run_command([env_dir / "bin" / command, "--help"], cwd=work)
        assert helped.returncode == 0 and any(
            f"{key}=" in helped.stdout for key in ("ckpt", "experiment", "outputs")
        ), command
    helped = run_command([env_dir / "bin" / "afqmc-train", "--help"], cwd=work)
    assert helped.stdout.startswith("usage: afqmc-train [group=option ...]"), helped.stdout[:300]
    # each installed script exits 0 on success (scripts exit with what their entry point returns) and 1 on a typo
    best, dev = next(work.glob("outputs/*/*/best_model")), REPO / "afqmc_exp" / "data" / "quickstart" / "dev.json"
    for command, args in (("afqmc-predict", [f"ckpt={best}", "sentence1=how do i repay", "sentence2=can i repay"]),
                          ("afqmc-evaluate", [f"ckpt={best}", f"file={dev}"]), ("afqmc-report", [])):  # fmt: skip
        done = run_command([env_dir / "bin" / command, *args], cwd=work)
        assert done.returncode == 0 and done.stdout.strip(), f"{command}: {done.stderr[-2000:]}"
        refused = run_command([env_dir / "bin" / command, "nosuchkey=1"], cwd=work)
        assert refused.returncode == 1 and refused.stderr.startswith("error: nosuchkey"), refused.stderr[-2000:]
    module = run_command([python, "-m", "afqmc_exp", "report"], cwd=work)
    assert module.returncode == 0 and "reporting experiment 'quickstart'" in module.stdout, module.stderr[-2000:]


def test_weights_logged_to_a_server_are_downloaded_once_then_cached(tmp_path, monkeypatch):
    from afqmc_exp.tracking import stored_weights

    port = free_port()
    store = [f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")]
    server = start_mlflow("server", store[0], tmp_path, port, *store[1:])
    url = f"http://127.0.0.1:{port}"
    try:
        out = tmp_path / "run"
        overrides = [o for o in SHORT_RUN if not o.startswith("tracking.log_weights")]
        trained = run_command([sys.executable, str(REPO / "train.py"), *overrides, "trainer.max_steps=2",
                               f"tracking.uri={url}", f"hydra.run.dir={out}"], cwd=tmp_path)  # fmt: skip
        assert trained.returncode == 0, trained.stderr[-3000:]
        run_id = (out / "mlflow_run_id").read_text().strip()
        monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))

        first = stored_weights.local_weights(f"runs:/{run_id}/best_model", url)
        assert first == tmp_path / "cache" / "models" / "runs" / run_id / "best_model"
        assert (first / "model.safetensors").exists()

        def no_download(**kwargs):
            raise AssertionError("downloaded again")

        monkeypatch.setattr("mlflow.artifacts.download_artifacts", no_download)
        assert stored_weights.local_weights(f"runs:/{run_id}/best_model", url) == first
        with pytest.raises(stored_weights.FetchError, match=r"^ckpt=runs:/deadbeef/best_model: .*\(store: http"):
            stored_weights.local_weights("runs:/deadbeef/best_model", url)
        said = run_command([sys.executable, str(REPO / "predict.py"), "ckpt=models:/nothing/1", "sentence1=a",
                            "sentence2=b", f"tracking_uri={url}"], cwd=tmp_path, env=OFFLINE)  # fmt: skip
        assert said.returncode == 1 and said.stderr.startswith("error: ckpt=models:/nothing/1")
        assert len(said.stderr.strip().splitlines()) == 1 and "Traceback" not in said.stderr
    finally:
        stop_mlflow(server)
