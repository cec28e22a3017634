"""``afqmc-disk`` (``commands/disk.py``): every run folder under outputs/ with its size, its best weights and their
copy in the MLflow store's artifacts, largest first, the totals and how to free each; nothing read but sizes."""

import pytest

from afqmc_exp.commands.disk import DiskArgs, listing


def run_folder(root, name, weights_bytes, run_id=None):
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (folder / "best_model").mkdir()
    (folder / "best_model" / "model.safetensors").write_bytes(b"\0" * weights_bytes)
    if run_id:
        (folder / "mlflow_run_id").write_text(run_id + "\n")
    return folder


def test_each_run_folder_its_weights_and_their_copy_in_mlflow_largest_first(tmp_path, store_uri):
    from afqmc_exp.tracking import store

    client = store.client(store_uri)
    run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "mlruns")))
    outputs = tmp_path / "outputs"
    uploaded = run_folder(outputs / "2026-12-06", "10-00-00", 3_000_000, run.info.run_id)
    client.log_artifacts(run.info.run_id, str(uploaded / "best_model"), "best_model")  # tracking.log_weights=true
    run_folder(outputs / "multirun" / "2026-12-06" / "11-00-00", "0", 1_000_000)  # a sweep's job, not uploaded
    (outputs / "2026-12-06" / "stray").mkdir()  # not a run folder

    lines = listing(DiskArgs(outputs=str(outputs), uri=store_uri)).splitlines()
    assert lines[1].split()[1:] == ["3", "MB", "3", "MB", "3", "MB"] and lines[1].startswith(str(uploaded))
    assert lines[2].split()[1:] == ["1", "MB", "1", "MB", "0", "MB"]
    assert lines[3] == f"2 run folders: 4 MB in {outputs} (4 MB of it best weights), 3 MB of weights copied into the " \
        "MLflow store's artifacts"  # fmt: skip
    assert "tracking.log_weights=false" in lines[4] and "mlflow gc --backend-store-uri sqlite:///" in lines[4]


def test_without_a_store_the_copies_count_nothing_and_a_missing_folder_is_one_line(tmp_path):
    run_folder(tmp_path / "outputs", "run", 2_000_000, "0" * 32)
    lines = listing(DiskArgs(outputs=str(tmp_path / "outputs"), uri=f"sqlite:///{tmp_path / 'none.db'}")).splitlines()
    assert lines[1].split()[1:] == ["2", "MB", "2", "MB", "0", "MB"]
    assert not (tmp_path / "none.db").exists()  # looked for, not made
    with pytest.raises(SystemExit, match=r"outputs=.*nowhere: no such folder"):
        listing(DiskArgs(outputs=str(tmp_path / "nowhere")))


def test_a_store_that_cannot_be_reached_is_asked_once_and_said(tmp_path, monkeypatch):
    """A server that is down: each question would wait through MLflow's retries (minutes), once per run folder. It is
    asked once; the copies then count nothing, and the listing says why."""
    from afqmc_exp.commands import disk

    asked = []

    class Down:
        def get_run(self, run_id):
            asked.append(run_id)
            raise ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/get")

    monkeypatch.setattr(disk, "_client", lambda uri: (Down(), None))
    for name in ("a", "b", "c"):
        run_folder(tmp_path / "outputs", name, 1_000_000, name * 32)
    lines = listing(DiskArgs(outputs=str(tmp_path / "outputs"), uri="http://tracking.example:5000")).splitlines()
    assert len(asked) == 1 and [line.split()[-2] for line in lines[1:4]] == ["0", "0", "0"]
    assert lines[-1] == ("the MLflow store http://tracking.example:5000 could not be asked (Max retries exceeded with "
                         "url: /api/2.0/mlflow/runs/get): its copies count nothing above")  # fmt: skip


def test_a_store_another_process_holds_is_said_not_counted_as_empty(tmp_path, monkeypatch, store_uri):
    """A store whose lock another process holds past the wait: its copies count nothing, and the listing says why
    (not a silent 0, which reads as "nothing uploaded")."""
    from filelock import FileLock

    from afqmc_exp.tracking import store

    monkeypatch.setattr(store, "BUSY_WAIT_S", 0.2)
    run_folder(tmp_path / "outputs", "run", 1_000_000, "a" * 32)
    with FileLock(f"{tmp_path}/mlflow.db.lock"):
        lines = listing(DiskArgs(outputs=str(tmp_path / "outputs"), uri=store_uri)).splitlines()
    assert lines[1].split()[-2] == "0"
    assert lines[-1].startswith(f"the MLflow store {store_uri} could not be asked ({tmp_path}/mlflow.db: its lock "
                                f"({tmp_path}/mlflow.db.lock) stayed held by another process for 0.2 s")  # fmt: skip


def test_a_server_store_that_is_down_is_said_at_once(tmp_path):
    """Not after MLflow's four minutes of retries: the listing says the store was not asked, and why."""
    from helpers import free_port

    run_folder(tmp_path / "outputs", "a", 1_000_000, "a" * 32)
    uri = f"http://127.0.0.1:{free_port()}"
    lines = listing(DiskArgs(outputs=str(tmp_path / "outputs"), uri=uri)).splitlines()
    assert (
        lines[-1].startswith(f"the MLflow store {uri} could not be asked (") and "no MLflow server answers" in lines[-1]
    )
