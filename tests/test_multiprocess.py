"""Data-parallel training with 2 CPU processes (gloo), launched by torchrun as users would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from afqmc_exp.files import held
from afqmc_exp.run_folder import RunFolder
from helpers import REPO, SHORT_RUN, free_port, launch, mlflow_runs, run_command

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def torchrun() -> list[str]:
    """``torchrun --nproc_per_node 2`` on a port the OS has free now (tests run side by side)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]


@pytest.mark.parametrize("n,batch_size", [(203, 16), (97, 8), (96, 8)])
def test_each_pair_once_per_epoch_across_processes(n, batch_size):
    proc = run_command(
        torchrun() + [str(REPO / "tests" / "helpers" / "shard_check.py"), str(n), str(batch_size)],
        cwd=REPO,
        env={**ENV, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = json.loads(proc.stdout.strip().splitlines()[-1])
    for first, second in epochs:  # each process's slices of the epoch's global batches
        assert len(first) == len(second)  # the same number of batches: DDP steps in lockstep
        assert sorted(i for batch in first + second for i in batch) == list(range(n))  # every pair exactly once
        assert all(first) and all(second) and all(abs(len(a) - len(b)) <= 1 for a, b in zip(first, second, strict=True))
    assert epochs[0] != epochs[1]


def run(cwd, launcher, out, overrides=("trainer.max_steps=6",)):
    cmd = launcher + [
        str(REPO / "train.py"),
        *SHORT_RUN,
        "trainer.eval_every=3",
        *overrides,
        f"hydra.run.dir={out}",
    ]
    proc = run_command(cmd, cwd=cwd, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = mlflow_runs(cwd, "afqmc")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = {
        k: [m.value for m in client.get_metric_history(runs[0].info.run_id, k)]
        for k in ("dev/loss", "dev/accuracy", "dev/auc")
    }
    return runs[0], history


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    # 69 pairs in batches of 16: each epoch ends on a 5-pair batch (3 + 2 pairs per process) and,
    # with 2 micro-batches per step, on a one-batch step: 3 steps per epoch, 2 epochs
    # (dropout off: with it, each process would draw its own masks, and the runs differ by more than rounding)
    overrides = [
        "data.train_limit=69",
        "trainer.grad_accumulation=2",
        "trainer.epochs=2",
        "model.dropout=0",
        "model.classifier_dropout=0",
    ]
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    _, single = run(tmp_path / "one", [sys.executable], tmp_path / "one" / "run", overrides)
    parallel_run, parallel = run(tmp_path / "two", torchrun(), tmp_path / "two" / "run", overrides)
    assert parallel_run.data.params["data.batch_size"] == "16"  # the global batch, 8 per process
    assert len(parallel["dev/loss"]) == len(single["dev/loss"]) == 2
    # equal up to rounding (different matrix shapes per process), which Adam amplifies in near-zero gradients
    for key, tolerance in (("dev/loss", 0.002), ("dev/accuracy", 0.004), ("dev/auc", 0.005)):
        for a, b in zip(parallel[key], single[key], strict=True):
            assert a == pytest.approx(b, abs=tolerance), key
    # the best weights were written once, where every process looked for them
    assert (tmp_path / "two" / "run" / "best_model" / "model.safetensors").exists()
    assert (
        json.loads((tmp_path / "two" / "run" / "result.json").read_text())["mlflow_run_id"] == parallel_run.info.run_id
    )


def test_accelerate_launch_runs_two_processes_into_one_run(tmp_path):
    launcher = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    run_, history = run(tmp_path, launcher, tmp_path / "run")  # trainer.device=cpu: gloo on this GPU-less machine
    assert run_.data.tags["sys.num_processes"] == "2" and len(history["dev/loss"]) == 2


def test_a_main_process_refused_the_run_folder_ends_every_process_itself(tmp_path):
    """Processes started one by one, as ``srun`` starts them (without ``--kill-on-bad-exit`` nothing stops the others
    when one fails), resume a killed run that another process is running: the main one is refused the run's folder,
    and each says so in one line and ends; none waits at a collective for a launcher to stop it."""
    earlier = tmp_path / "run"
    trained = run_command([sys.executable, str(REPO / "train.py"), *SHORT_RUN, "trainer.max_steps=2",
                           f"hydra.run.dir={earlier}"], cwd=tmp_path, env=ENV)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    RunFolder(earlier).result.unlink()  # killed before it finished, as far as resume= can tell
    command = [sys.executable, str(REPO / "train.py"), f"resume={earlier}", f"hydra.run.dir={tmp_path / 'logs'}"]
    ranks = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    with held(RunFolder(earlier).lock, "held by this test"):
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        processes = [launch(command, tmp_path, {**ENV, **ranks, "RANK": r, "LOCAL_RANK": r}, **pipes) for r in "01"]
        try:
            ended = [p.communicate(timeout=240) for p in processes]  # a process left waiting never ends: timed out
        finally:
            for p in processes:
                p.kill()
    for process, (_, stderr) in zip(processes, ended, strict=True):
        assert process.returncode == 1, stderr[-3000:]
        assert "another process is running this run" in stderr.strip().splitlines()[-1], stderr[-3000:]
