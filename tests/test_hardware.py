"""The machine: mixed precision that would not pay is named, bf16 evaluation only where it is native."""

import pytest
import torch

from afqmc_exp.training import hardware


def test_mixed_precision_that_would_not_pay_on_this_cpu_is_named(fresh_accelerate_state, caplog, monkeypatch):
    from accelerate.state import AcceleratorState

    hardware.build_accelerator(device="cpu", mixed_precision="fp16")
    assert "fp16 needs a GPU: this CPU run computes in fp32" in caplog.text
    for native, warned in ((False, True), (True, False)):
        AcceleratorState._reset_state(reset_partial_state=True)
        caplog.clear()
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda native=native: native)
        assert hardware.build_accelerator(device="cpu", mixed_precision="bf16").mixed_precision == "bf16"
        assert ("bf16 is emulated" in caplog.text) is warned


def test_eval_precision_auto_uses_bf16_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda native=native: native)
        assert hardware.eval_in_bf16("auto", cpu) is native
        assert hardware.eval_in_bf16("fp32", cpu) is False
        assert hardware.eval_in_bf16("bf16", cpu) is True


def test_parallel_sweep_jobs_are_spread_over_the_gpus(monkeypatch):
    """hydra/launcher=joblib on a machine with 4 GPUs: job k trains on GPU k mod 4 (checked on CPU: the device
    count and set_device are stated, as CUDA would answer them)."""
    import torch

    from afqmc_exp.training.hardware import pin_parallel_job

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert [pin_parallel_job(job) for job in range(6)] == [0, 1, 2, 3, 0, 1] == chosen
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pin_parallel_job(3) is None and len(chosen) == 6  # one GPU: nothing to spread


@pytest.mark.slow  # starts processes
def test_the_time_to_the_first_step_counts_from_the_interpreter_not_the_shell_it_replaced():
    """``bash -c '... && python train.py'`` runs python in the shell's process: its start time would count
    what the shell did first (a pip install of minutes)."""
    import subprocess
    import sys

    code = (
        "import sys, time; from afqmc_exp.training.hardware import seconds_since_start; "
        "print(seconds_since_start(), time.time() - float(sys.argv[1]))"
    )
    script = f"began=$(date +%s.%N) && sleep 3 && exec {sys.executable} -c '{code}' $began"
    shown = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    since_start, since_shell = map(float, shown.stdout.split())
    assert 0 < since_start <= since_shell - 2.9, shown.stderr  # the shell's 3 s before python are not counted
