"""Every command the README and the docs/ pages show works as written: each is run here, in a folder as a user's
session would run them (three sessions: training, sweeping, then scoring what was trained), with only local paths
and sizes substituted (the data folder, a weights folder, a run id,
the offline model, a few steps and trials); each must exit 0. A command they gain is either run here or named in
``NOT_RUN`` with the reason, or this test fails."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import AFQMC, OFFLINE, REPO, head_of, run_command
from helpers.tasks import write_task_files

SLOW = pytest.mark.slow  # every test here but the first runs the README's commands
BIN = Path(sys.executable).parent
LOCAL = ["model=minilm", "trainer.max_steps=2", "data.dev_limit=50"]  # the offline model, a few steps, a small dev
SWEPT = [*LOCAL, "trainer.max_steps=1", "data.test_file=null", "tracking.log_weights=false"]  # each job's size
TEST_PAIRS = 300  # predicting the AFQMC test file, or scoring its dev file: the first 300 pairs
# README command -> what is appended to run it here (None: nothing)
RUN = {
    "python train.py data.dir=../shared/data/afqmc model=minilm debug=fast": None,
    "python train.py model.name_or_path=/models/my-bert data.dir=/data/afqmc": ["trainer.max_steps=2",
                                                                                "data.dev_limit=50",
                                                                                "data.test_limit=50"],
    "python train.py data=pairs data.dir=/data/mine data.format=csv data.train_file=train.csv data.dev_file=dev.csv "
    "data.test_file=null data.fields.text_a=q1 data.fields.text_b=q2 data.fields.label=answer "
    "data.labels=[different,same]": LOCAL,
    "python train.py data=ocnli data.dir=/data/ocnli 'data.extra_dev={diagnostics: {file: diagnostics_test.json, "
    "fields: {text_a: premise, text_b: hypothesis, id: index}}}'": LOCAL,
    "python train.py --multirun data=afqmc,lcqmc,bq 'data.dir=/data/${data.name}'": LOCAL,
    "python evaluate.py ckpt=outputs/.../best_model file=../shared/data/afqmc/dev.json": None,
    "python predict.py ckpt=outputs/.../best_model file=../shared/data/afqmc/test.json out=afqmc_predict.json": None,
    'python predict.py ckpt=runs:/<run id>/best_model sentence1="花呗怎么还款" sentence2="花呗如何还钱"': None,
    "python predict.py ckpt=models:/afqmc-bert/3 file=pairs.json out=scored.json": None,
    "afqmc-report": None,
    "afqmc-report experiment=afqmc": None,
    "afqmc-report parent=<sweep run id>": None,
    "afqmc-disk": None,
    "python train.py rerun=<run id>": None,
    "python train.py --multirun optim.lr=1e-5,2e-5,3e-5 seed=1,2,3": SWEPT,
    "python train.py --multirun hydra/launcher=joblib hydra.launcher.n_jobs=2 seed=1,2,3": SWEPT,
    "python train.py hparams_search=afqmc_optuna hydra.sweeper.n_trials=30": SWEPT,
    "python train.py hparams_search=afqmc_optuna hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweeper.n_jobs=2 "
    "hydra.sweeper.n_trials=40": SWEPT,
    "python train.py resume=outputs/2026-11-25/10-00-00.123456": None,
    "python train.py --multirun resume=outputs/multirun/2026-12-06/08-09-01.123456": None,
    "python train.py --multirun resume=<its parent run id> tracking.uri=sqlite:///mlflow.db": None,
    "python train.py experiment=quickstart tracking.log_model=true tracking.register_as=quickstart-served": [
        "trainer.max_steps=2"],
}  # fmt: skip
SERVE = ("MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve -m models:/quickstart-served/1 --env-manager "
         "local --host 127.0.0.1 --port 5001")  # fmt: skip
REQUESTS = {  # the README's serving requests -> how many answers each gets
    "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d '{\"dataframe_records\": "
    "[{\"sentence1\": \"how do i repay huabei\", \"sentence2\": \"how can i pay back huabei\"}]}'": 1,
    "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d '{\"dataframe_split\": "
    "{\"columns\": [\"text\", \"text_pair\"], \"data\": [[\"open an account\", \"close my account\"], "
    "[\"pay by card\", \"can i pay with a card\"]]}}'": 2,
}  # fmt: skip
NOT_RUN = {  # README command -> why this test does not run it (and which test covers it, if any)
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[test]" && '
    "HF_HUB_OFFLINE=1 python train.py experiment=quickstart": "the set-up itself: .ci/run runs it as written",
    ". .venv/bin/activate && python -m pytest --slow": "the test command: .ci/run runs it as written",
    "python train.py": "bert-base-chinese from the Hub (no internet here)",
    "python train.py model=roberta optim.lr=1e-5": "a Hub model (no internet here)",
    "export MLFLOW_TRACKING_URI=http://mlflow.internal:5000": "a team's server (test_team_server.py)",
    "export MLFLOW_TRACKING_URI=http://mlflow-host:5000": "a team's server (test_team_server.py)",
    "python train.py --multirun hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1 "
    "hydra.launcher.timeout_min=240 model=roberta optim.lr=1e-5,2e-5,3e-5": "a SLURM cluster (its config composes: "
    "test_sweep_optuna_and_launchers.py)",
    "for variant in regularizer=none regularizer=fgm regularizer=rdrop trainer.ema_decay=0.999; do": "a GPU recipe",
    "python train.py --multirun experiment=clue_bert data.dir=/path/to/afqmc seed=1,2,3,4,5 "
    "tracking.experiment=tricks-afqmc $variant": "a GPU recipe with bert-base-chinese from the Hub",
    "done": "the loop above",
    'sbatch --array=0-7 --gres=gpu:1 --wrap "python train.py hparams_search=afqmc_optuna '
    'hydra.sweeper.storage=postgresql://optuna:PASSWORD@db-host:5432/optuna hydra.sweeper.n_trials=200"': "a SLURM "
    "cluster (the workers of one study: test_sweep_parent.py, test_sweep_optuna_and_launchers.py)",
    "afqmc-report experiment=tricks-afqmc": "the report of that GPU recipe",
    "accelerate launch --multi_gpu --num_processes 4 train.py model=roberta data.batch_size=64": "4 GPUs",
    "torchrun --nproc_per_node 4 train.py model=roberta": "4 GPUs (2 CPU processes: test_multiprocess.py)",
    "accelerate launch --multi_gpu --num_processes 2 train.py trainer.device=cpu ...": "test_multiprocess.py",
    "mlflow server --backend-store-uri postgresql://mlflow:PASSWORD@db-host:5432/mlflow --artifacts-destination "
    "s3://bucket/mlflow --host 0.0.0.0 --port 5000": "a team's server (test_team_server.py)",
    "python train.py ...": "a placeholder for any command",
    "python benchmarks/throughput.py --data ../shared/data/afqmc --pairs 3 --hf "
    "--variant trainer.mixed_precision=bf16": "a benchmark (test_benchmarks.py runs it small)",
    "python benchmarks/throughput.py --device cuda --model /path/to/bert-base-chinese "
    "--variant trainer.compile=reduce-overhead": "a GPU",
    "python benchmarks/host_syncs.py --model /path/to/bert-base-chinese": "a GPU (test_benchmarks.py on CPU)",
    "python benchmarks/sweep_idle.py --train --jobs 2 --trials 8 --rounds 2": "a benchmark of 32 trainings (minutes; "
    "test_benchmarks.py runs its simulated arms, and reads a job's span from its log)",
    "python benchmarks/ops_per_step.py --variant trainer.max_grad_norm=null": "test_benchmarks.py runs it small",
    "mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --workers 1": "test_ui.py runs it",
    ". .venv/bin/activate && pip install mutmut && OMP_NUM_THREADS=1 AFQMC_DATA=$PWD/../shared/data/afqmc python -m "
    "mutmut run && "
    "python -m mutmut results": "mutation testing: hours on two cores, run by hand; its scores are in docs/testing.md",
}  # fmt: skip


def readme_commands() -> list[str]:
    """Every command line of the bash blocks of the README and of every docs/*.md page (a command moved to a docs
    page is still a promise): continuations joined, comments and spacing dropped."""
    commands = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = " ".join(line.split("  #")[0].split())
                if line and not line.startswith("#"):
                    commands.append(line)
    return commands


def test_every_readme_command_is_run_here_or_says_why_not():
    commands, known = readme_commands(), set(RUN) | set(NOT_RUN) | {SERVE, *REQUESTS}
    assert set(commands) == known, set(commands) ^ known


def user_session(work: Path) -> dict:
    """The folders a user would have in ``work``: the shared AFQMC data, their own CSV pairs, OCNLI with the
    diagnostics, a data root with three tasks, a pairs.json to predict, and AFQMC's dev and test files to score
    (their first 300 pairs: a size)."""
    root = work / "data"
    for task in ("afqmc", "lcqmc", "bq"):
        write_task_files(task, root / task)
    ocnli = write_task_files("ocnli", work / "ocnli")
    diagnostics = [{"index": i, "premise": "how do i close my wallet", "hypothesis": "i want to cancel my wallet",
                    "label": "entailment"} for i in range(6)]  # fmt: skip
    (ocnli / "diagnostics_test.json").write_text("".join(json.dumps(r) + "\n" for r in diagnostics))
    mine = work / "mine"
    mine.mkdir()
    rows = [f'"how do i pay, {i}",can i pay {i},{"same" if i % 3 else "different"}' for i in range(30)]
    for name in ("train.csv", "dev.csv"):
        (mine / name).write_text("q1,q2,answer\n" + "\n".join(rows) + "\n")
    (work / "pairs.json").write_text('{"sentence1": "花呗怎么还款", "sentence2": "花呗如何还钱"}\n')
    heads = {}
    for split in ("dev", "test"):
        head = head_of(AFQMC / f"{split}.json", work / f"afqmc_{split}_head.json", TEST_PAIRS)
        heads[f"../shared/data/afqmc/{split}.json"] = str(head)
    return {"work": work, "/data/afqmc": str(AFQMC), "/data/mine": str(mine), "/data/ocnli": str(ocnli),
            "/data/": f"{root}/", **heads, "../shared/data/afqmc": str(AFQMC)}  # fmt: skip


@pytest.fixture
def session(tmp_path):
    return user_session(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A session that has trained: the README's 5-step smoke test, and its sweep over three tasks (whose jobs log
    their weights); its run folder, the sweep's parent run and an AFQMC job of it."""
    session = user_session(tmp_path_factory.mktemp("readme"))
    work = session["work"]
    run("python train.py data.dir=../shared/data/afqmc model=minilm debug=fast", session)
    fast = next((work / "outputs").glob("*/*/best_model")).parent
    command = "python train.py --multirun data=afqmc,lcqmc,bq 'data.dir=/data/${data.name}'"
    run(command, session, RUN[command])
    runs = latest_run(work, "afqmc")[1]
    parent_id = next(r.info.run_id for r in runs if "sweep.dir" in r.data.tags and
                     "mlflow.parentRunId" not in r.data.tags)  # fmt: skip
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.params["data.name"] for r in jobs} == {"afqmc", "lcqmc", "bq"}  # one sweep: its parent's experiment
    with_weights = next(r.info.run_id for r in jobs if r.data.params.get("data.name") == "afqmc")
    return session, fast, parent_id, with_weights


def run(command: str, session: dict, extra: list[str] | None = None, **replace) -> subprocess.CompletedProcess:
    """The README's ``command`` in the session's folder, its local paths (and ``replace``) substituted."""
    assert command in RUN
    swaps = {**{k: v for k, v in session.items() if k != "work"}, **replace}
    pattern = "|".join(re.escape(k) for k in sorted(swaps, key=len, reverse=True))  # one pass: nothing twice
    command = re.sub(pattern, lambda m: swaps[m.group(0)], command)
    if command.startswith("python "):
        command = f"{sys.executable} {command[len('python ') :]}"
    args = shlex.split(command)
    if args[0].startswith("afqmc-"):
        args[0] = str(BIN / args[0])
    elif args[1] in ("train.py", "evaluate.py", "predict.py"):
        args[1] = str(REPO / args[1])
    proc = run_command(args + (extra or []), cwd=session["work"], env=OFFLINE, timeout=1800)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    return proc


def latest_run(work: Path, experiment: str):
    from afqmc_exp.tracking import store

    client = store.client(f"sqlite:///{work / 'mlflow.db'}", create=False)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"])


@SLOW
def test_the_training_commands_work_as_written(session):
    from afqmc_exp.model import packaged_minilm_path

    command = "python train.py model.name_or_path=/models/my-bert data.dir=/data/afqmc"
    run(command, session, RUN[command], **{"/models/my-bert": packaged_minilm_path()})
    for command in [c for c in RUN if c.startswith("python train.py data=")]:
        run(command, session, RUN[command])


@SLOW
def test_the_sweep_commands_work_as_written(session):
    sizes = {"n_trials=30": "n_trials=2", "seed=1,2,3": "seed=1,2", "optim.lr=1e-5,2e-5,3e-5": "optim.lr=1e-5"}
    for command in [c for c in RUN if "seed=1,2,3" in c or "n_trials=30" in c]:  # 2 jobs of the grid's 9, 2 of 3
        run(command, session, [*RUN[command], f"data.dir={AFQMC}"], **sizes)
    from omegaconf import OmegaConf

    from afqmc_exp.sweep_folder import SweepFolder

    grid = next(p.parent for p in session["work"].glob("outputs/multirun/*/*/multirun.yaml")
                if "optim.lr=1e-5" in OmegaConf.load(p).hydra.overrides.task)  # fmt: skip
    by_folder, by_parent = [c for c in RUN if c.startswith("python train.py --multirun resume=")]
    for command, target in ((by_folder, {"outputs/multirun/2026-12-06/08-09-01.123456": str(grid)}),
                            (by_parent, {"<its parent run id>": SweepFolder(grid).parent_run_id()})):  # fmt: skip
        said = run(command, session, None, **target)
        assert (said.stdout + said.stderr).count("holds this job's run, finished") == 2  # the grid's jobs, all done


@SLOW
def test_an_asynchronous_search_in_two_processes_works_as_written(session):
    """Trials in joblib's two processes, each slot given the next trial as it frees: the study's total run once,
    every trial a run under one parent."""
    import optuna

    command = next(c for c in RUN if "hydra.sweeper.n_jobs=2" in c)
    run(command, session, [*RUN[command], f"data.dir={AFQMC}"], **{"n_trials=40": "n_trials=3"})
    study = optuna.load_study(study_name="afqmc_minilm", storage=f"sqlite:///{session['work'] / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    runs = latest_run(session["work"], "afqmc")[1]
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 3 and parent.data.tags["sweep.study"] == "afqmc_minilm"


@SLOW
def test_the_scoring_reporting_and_continuing_commands_work_as_written(trained):
    from afqmc_exp.tracking import store

    session, fast, parent_id, with_weights = trained
    work = session["work"]
    best = {"outputs/.../best_model": str(fast / "best_model")}
    run("python evaluate.py ckpt=outputs/.../best_model file=../shared/data/afqmc/dev.json", session, **best)
    run("python predict.py ckpt=outputs/.../best_model file=../shared/data/afqmc/test.json out=afqmc_predict.json",
        session, **best)  # fmt: skip
    assert len((work / "afqmc_predict.json").read_text().splitlines()) == TEST_PAIRS
    said = run('python predict.py ckpt=runs:/<run id>/best_model sentence1="花呗怎么还款" sentence2="花呗如何还钱"',
               session, **{"<run id>": with_weights})  # fmt: skip
    assert set(json.loads(said.stdout)) == {"label", "prob", "probs"}
    client = store.client(f"sqlite:///{work / 'mlflow.db'}", create=False)
    client.create_registered_model("afqmc-bert")
    for _ in range(3):  # the README's version 3
        client.create_model_version("afqmc-bert", f"runs:/{with_weights}/best_model", run_id=with_weights)
    run("python predict.py ckpt=models:/afqmc-bert/3 file=pairs.json out=scored.json", session)
    assert json.loads((work / "scored.json").read_text())["label"] in ("0", "1")
    for command in ("afqmc-report", "afqmc-report experiment=afqmc"):
        run(command, session)
    run("afqmc-report parent=<sweep run id>", session, **{"<sweep run id>": parent_id})
    listed = run("afqmc-disk", session).stdout.splitlines()  # the debug run and the sweep's jobs, weights and copies
    assert listed[-2].startswith("4 run folders: ") and "MB of weights copied into the MLflow store" in listed[-2]
    debug_run = (fast / "mlflow_run_id").read_text().strip()
    run("python train.py rerun=<run id>", session, **{"<run id>": debug_run})
    run("python train.py resume=outputs/2026-11-25/10-00-00.123456", session,
        **{"outputs/2026-11-25/10-00-00.123456": str(fast)})  # a finished run: it says so  # fmt: skip


@SLOW
def test_the_serving_commands_work_as_written(session):
    """The README's serving example: a quickstart-sized run logs and registers its model, ``mlflow models serve``
    serves it (on a free port), and each ``curl`` request gets one answer per pair, in the CLUE files' columns and
    in Hugging Face's."""
    import os
    import time
    import urllib.request

    from helpers import free_port, stop_mlflow

    work = session["work"]
    command = "python train.py experiment=quickstart tracking.log_model=true tracking.register_as=quickstart-served"
    run(command, session, RUN[command])
    port = str(free_port())
    env = {**OFFLINE, "PATH": f"{BIN}{os.pathsep}{OFFLINE['PATH']}"}
    with open(work / "serve.log", "w") as log:
        server = subprocess.Popen(["bash", "-c", SERVE.replace("5001", port)], cwd=work, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while True:  # until the server answers its health check
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (work / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, "mlflow models serve did not start"
            time.sleep(0.5)
        for request, pairs in REQUESTS.items():
            said = subprocess.run(["bash", "-c", request.replace("5001", port)], env=env, capture_output=True,
                                  text=True, timeout=120, check=True)  # fmt: skip
            answers = json.loads(said.stdout)["predictions"]
            assert len(answers) == pairs and all(set(a) == {"label", "prob", "probs"} for a in answers), said.stdout
            assert all(a["label"] in ("0", "1") and set(a["probs"]) == {"0", "1"} for a in answers)
    finally:
        stop_mlflow(server)
