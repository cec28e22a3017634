"""The GPU tools in benchmarks/ run where a GPU session needs them to, checked here on CPU so they cannot rot."""

import json
import sys
import warnings

import pytest
import torch

from helpers import REPO, HostSyncs, tiny_pretrained

sys.path.insert(0, str(REPO / "benchmarks"))


class FakeSyncDebugMode:
    """``torch.cuda.set_sync_debug_mode`` for a CPU: "warn" warns, as CUDA's does, at each host read of a
    tensor (seen by the same probe as the trainer's test), "default" stops."""

    def __init__(self):
        self.probe = None

    def __call__(self, mode: str) -> None:
        if mode == "warn":
            self.probe = HostSyncs().__enter__()
            self.probe.calls = WarningList()
        elif self.probe is not None:
            self.probe.__exit__(None, None, None)
            self.probe = None


class WarningList(list):
    def append(self, call):
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=2)
        super().append(call)


@pytest.mark.parametrize("two_d_mask", [False, True])
def test_host_syncs_counts_what_a_step_reads_on_the_host(tmp_path, monkeypatch, capsys, two_d_mask, afqmc_dir):
    """benchmarks/host_syncs.py: none with the trainer as it is; one per batch when the model gets the 2-D
    mask (transformers' ``mask.all()``)."""
    import host_syncs

    from afqmc_exp.training import trainer as trainer_module

    pretrained = tiny_pretrained(tmp_path / "tiny")
    pretrained.model.save_pretrained(tmp_path / "tiny")
    pretrained.tokenizer.save_pretrained(tmp_path / "tiny")
    availability = iter([True])  # the script's own check sees a GPU; the accelerator then picks the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: next(availability, False))
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", FakeSyncDebugMode())
    if two_d_mask:
        monkeypatch.setattr(trainer_module, "model_inputs", lambda batch, model: {
            k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")})  # fmt: skip
    argv = ["host_syncs.py", "--model", str(tmp_path / "tiny"), "--data", str(afqmc_dir), "--steps", "6", "--warm", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    host_syncs.main()
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["batches_watched"] == 4
    assert report["host_syncs"] == (4 if two_d_mask else 0), report


@pytest.mark.slow  # four short trainings in fresh processes
def test_throughput_runs_every_arm_and_reports_ratios(tmp_path, afqmc_dir):
    """benchmarks/throughput.py end to end on a tiny model: the tutorial loop, HF Trainer, train.py and a
    variant, each in its own process, and the last line's JSON with every arm's ratios to both peers."""
    from helpers import run_command

    pretrained = tiny_pretrained(tmp_path / "tiny")
    pretrained.model.save_pretrained(tmp_path / "tiny")
    pretrained.tokenizer.save_pretrained(tmp_path / "tiny")
    proc = run_command([sys.executable, REPO / "benchmarks" / "throughput.py", "--model", tmp_path / "tiny",
                        "--data", afqmc_dir, "--steps", "4", "--pairs", "1", "--hf",
                        "--variant", "trainer.log_every=2"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    arms = report["batches"]["16"]
    assert set(arms) == {"tutorial", "hf", "ours", "ours:trainer.log_every=2"}
    for name in ("ours", "ours:trainer.log_every=2"):
        assert arms[name]["train_x_tutorial"] > 0 and arms[name]["train_x_hf"] > 0 and arms[name]["train_mfu"] > 0
        assert 0 < arms[name]["startup_data_s"] <= arms[name]["startup_model_s"] <= arms[name]["time_to_first_step_s"]
    assert "ours                               startup: data read" in proc.stdout


@pytest.mark.slow  # loads a tokenizer and the AFQMC split in a fresh process
def test_collate_benchmark_compares_both_collators(afqmc_dir):
    from helpers import run_command

    proc = run_command([sys.executable, REPO / "benchmarks" / "collate.py", "--data", afqmc_dir, "--rounds", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split(":")[0] for line in proc.stdout.splitlines()[-2:]] == ["batch  16", "batch 256"]


@pytest.mark.slow  # two short trainings in fresh processes
def test_ops_per_step_counts_what_bf16_autocast_adds(afqmc_dir):
    """benchmarks/ops_per_step.py: per-step operation counts for the defaults and bf16, where autocast adds a
    cast per weight and per matmul input in the forward pass and again in the backward; no host reads."""
    from helpers import run_command

    proc = run_command([sys.executable, REPO / "benchmarks" / "ops_per_step.py", "--data", afqmc_dir,
                        "--steps", "3", "--warm", "2"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    arms = json.loads(proc.stdout.strip().splitlines()[-1])
    fp32, bf16 = arms["defaults"], arms["trainer.mixed_precision=bf16"]
    assert fp32["host_reads"] == bf16["host_reads"] == 0
    assert fp32["casts"] <= 2 < 400 < bf16["casts"]  # 12 layers: ~200 weights and biases, each cast twice
    assert bf16["ops_per_step"] - fp32["ops_per_step"] == bf16["casts"] - fp32["casts"]


@pytest.mark.slow  # a process, and two searches on SQLite
def test_sweep_idle_compares_batches_and_free_slots_on_one_search():
    """benchmarks/sweep_idle.py, tiny: both arms run the same search; the last line's JSON has each arm's makespan
    and slot idle, and their ratio."""
    from helpers import run_command

    proc = run_command([sys.executable, REPO / "benchmarks" / "sweep_idle.py", "--jobs", "2", "--trials", "4",
                        "--unit", "0.01", "--rounds", "1"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for arm in ("batches (Hydra)", "slots (afqmc-exp)"):
        assert 0 <= report[arm]["slot_idle"] < 1 and report[arm]["makespan_s"] > 0
    assert report["makespan_ratio"] > 0 and (report["jobs"], report["trials"]) == (2, 4)


def test_a_job_s_span_is_read_from_its_own_log(tmp_path):
    """``sweep_idle.py --train`` measures each job from its folder: the first and the last line of its train.log."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from sweep_idle import log_span

    log = tmp_path / "train.log"
    log.write_text("[2026-12-06 08:10:31,121][HYDRA] start\nno time here\n[2026-12-06 08:10:41,621][x][INFO] - end\n")
    start, end = log_span(log)
    assert round(end - start, 3) == 10.5


@pytest.mark.slow  # two processes make MLflow stores
def test_temp_medium_reports_flushes_and_new_stores_on_both_folders_and_their_ratio(tmp_path):
    """benchmarks/temp_medium.py, one round (both arms in tmp_path here: the form of its report, not a speed)."""
    from helpers import run_command

    proc = run_command([sys.executable, REPO / "benchmarks" / "temp_medium.py", "--rounds", "1", "--disk", tmp_path,
                        "--ram", tmp_path])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    *rounds, last = proc.stdout.strip().splitlines()
    assert [line.split(" (")[0] for line in rounds] == ["round 1 disk", "round 1 ram"]
    report = json.loads(last)
    for arm in ("disk", "ram"):
        assert report[arm]["fsync_ms"] >= 0 and report[arm]["new_store_s"] > 0
    assert set(report["disk_over_ram"]) == {"fsync_ms", "new_store_s"}
