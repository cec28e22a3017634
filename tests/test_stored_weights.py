"""Weights logged to MLflow, downloaded into the cache (``tracking/stored_weights.py``): two processes fetching the
same weights at once both get them, and an entry that holds no weights never blocks a later fetch."""

import json
from pathlib import Path

import pytest


@pytest.fixture
def fetch(tmp_path, monkeypatch):
    """``_cached`` on a store whose download writes a weights folder; ``meanwhile`` runs inside the download (what
    another process does at that moment). Returns the folder it gives and the cache entry."""
    import mlflow

    from afqmc_exp.tracking import stored_weights

    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path / "cache"))
    entry = tmp_path / "cache" / "models" / "runs" / "abc" / "best_model"

    def fetched(meanwhile=lambda: None) -> Path:
        def download(artifact_uri, dst_path, **kwargs):
            (Path(dst_path) / "best_model").mkdir()
            (Path(dst_path) / "best_model" / "config.json").write_text('{"by": "this process"}')
            meanwhile()
            return str(Path(dst_path) / "best_model")

        monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
        return stored_weights._cached("runs:/abc/best_model", "runs/abc/best_model", "sqlite:///mlflow.db")

    return fetched, entry


def test_weights_another_process_cached_first_are_taken_not_a_traceback(fetch):
    fetched, entry = fetch

    def the_other_process_finishes_first():
        entry.mkdir(parents=True)
        (entry / "config.json").write_text('{"by": "the other process"}')

    assert fetched(the_other_process_finishes_first) == entry
    assert json.loads((entry / "config.json").read_text()) == {"by": "the other process"}
    assert [p.name for p in entry.parent.iterdir()] == ["best_model"]  # no download left beside it


def test_a_cache_entry_without_weights_is_replaced_by_the_next_fetch(fetch):
    fetched, entry = fetch
    entry.mkdir(parents=True)
    (entry / "something.txt").write_text("an earlier download of a folder that held no weights")
    assert fetched() == entry
    assert json.loads((entry / "config.json").read_text()) == {"by": "this process"}
    assert not (entry / "something.txt").exists()
