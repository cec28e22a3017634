"""What a job's MLflow run is recorded as (``tracking/run_tracking.py``): ``RunTracking.for_job`` turns the composed
config and Hydra's job into the run's name, tags, params and sweep parent, once, and ``open`` opens the run or
reopens the folder's own."""

import json

from hydra.types import RunMode
from omegaconf import OmegaConf

from afqmc_exp.run_folder import RunFolder
from afqmc_exp.sweep_folder import SweepFolder
from afqmc_exp.tracking import store
from afqmc_exp.tracking.masking import Masker
from afqmc_exp.tracking.mlflow_tracking import MlflowTracking
from afqmc_exp.tracking.run_tracking import RunTracking
from helpers import compose

SECRET = "hunter2-secret"


def job(tmp_path, *, mode=RunMode.RUN, choices=None, num=0, overrides=("optim.lr=3e-05",)):
    """Hydra's side of a job, as ``HydraConfig.get()`` gives it to the train command."""
    return OmegaConf.create({
        "mode": mode, "sweep": {"dir": str(tmp_path / "sweep")}, "job": {"num": num},
        "runtime": {"choices": choices or {"model": "minilm", "data": "quickstart"}},
        "overrides": {"task": list(overrides) + [f"+db_password={SECRET}"]},
    })  # fmt: skip


def config(tmp_path, *extra):
    return compose(["experiment=quickstart", "optim.lr=3e-05", f"+db_password={SECRET}", *extra], tmp_path)


def test_a_single_job_is_named_tagged_and_given_masked_params(tmp_path):
    cfg, folder = config(tmp_path), RunFolder(tmp_path / "run")
    tracked = RunTracking.for_job(cfg, job(tmp_path), folder, Masker([SECRET]))
    assert tracked.tracking.run_name.startswith("minilm-quickstart-lr3e-05-bs8-s42-")
    assert tracked.tracking.experiment == "quickstart" and tracked.parent_run_id is None
    tags = tracked.tags
    assert tags["hydra.output_dir"] == str(folder.root) and str(folder.root) in tags["mlflow.note.content"]
    assert tags["hydra.overrides"] == "optim.lr=3e-05 +db_password=***"
    assert {tags["model"], tags["task"], tags["metric"]} == {"minilm", "quickstart", "accuracy"}
    assert json.loads(tags["hydra.choices"]) == {"model": "minilm", "data": "quickstart"}
    assert not any(key.startswith("sweep.") for key in tags)
    assert tracked.params["optim.lr"] == "3e-05" and tracked.params["db_password"] == "***"
    assert SECRET not in json.dumps([tracked.params, tags])


def test_a_sweeps_job_nests_under_its_parent_in_its_experiment_and_its_name_shows_what_is_swept(tmp_path):
    SweepFolder(tmp_path / "sweep").save_parent("parent123", "their-experiment", ["optim.lr", "trainer.epochs"])
    cfg = config(tmp_path, "trainer.epochs=2")
    in_a_sweep = job(tmp_path, mode=RunMode.MULTIRUN, num=3)
    tracked = RunTracking.for_job(cfg, in_a_sweep, RunFolder(tmp_path / "run"), Masker())
    assert tracked.parent_run_id == "parent123" and tracked.tracking.experiment == "their-experiment"
    assert tracked.tracking.run_name == "minilm-quickstart-lr3e-05-bs8-s42-epochs2"  # no digest: the swept values
    assert tracked.tags["sweep.job_num"] == "3" and tracked.tags["sweep.dir"] == str((tmp_path / "sweep").resolve())


def test_a_resumed_run_keeps_the_options_it_started_with_and_a_rerun_its_name(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.hydra.mkdir(parents=True)
    OmegaConf.save({"hydra": {"runtime": {"choices": {"model": "roberta"}}}}, folder.hydra_settings)
    resumed = RunTracking.for_job(config(tmp_path), job(tmp_path), folder, Masker(), resumed=True)
    assert resumed.tags["model"] == "roberta" and resumed.tracking.run_name.startswith("roberta-quickstart-")
    rerun = RunTracking.for_job(config(tmp_path), job(tmp_path), folder, Masker(), run_name="theirs-rerun",
                                tags={"rerun_of": "abc"})  # fmt: skip
    assert rerun.tracking.run_name == "theirs-rerun" and rerun.tags["rerun_of"] == "abc"
    named = RunTracking.for_job(config(tmp_path, "tracking.run_name=mine"), job(tmp_path), folder, Masker())
    assert named.tracking.run_name == "mine"  # the user's own name wins


def test_without_tracking_nothing_is_tagged_or_logged(tmp_path):
    tracked = RunTracking.for_job(config(tmp_path, "tracking.enabled=false"), job(tmp_path),
                                  RunFolder(tmp_path / "run"), Masker())  # fmt: skip
    assert not tracked.params and not tracked.tags
    assert not tracked.open(resume=False).active


def test_open_records_the_run_id_in_the_folder_and_resuming_reopens_that_run(tmp_path, store_uri):
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    tracked = RunTracking(MlflowTracking(uri=store_uri, experiment="x"), folder, params={"optim.lr": "3e-05"},
                          tags={"model": "minilm"})  # fmt: skip
    first = tracked.open(resume=False)
    first.end("KILLED")
    assert folder.run_id() == first.run_id
    again = tracked.open(resume=True)
    again.end("FINISHED")
    assert again.run_id == first.run_id
    stored = store.client(store_uri).get_run(first.run_id)
    assert stored.info.status == "FINISHED" and stored.data.params == {"optim.lr": "3e-05"}
    assert stored.data.tags["model"] == "minilm"
    other = tracked.open(resume=False)  # a new run in the same folder (not resuming): a run of its own
    other.end("FINISHED")
    assert other.run_id != first.run_id and folder.run_id() == other.run_id
