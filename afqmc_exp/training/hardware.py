"""The machine a run trains on: which precisions it computes natively, the Accelerator, and what to record.

Everything here takes plain values (a device name, a precision), not the trainer config, so that the
trainer, inference and the command-line tools can all use it without importing each other.

Why bf16 evaluation is decided here and not simply switched on: bf16 only pays where the hardware
multiplies bf16 natively (GPUs with bf16; CPUs with AVX512-BF16 or AMX). Elsewhere it is emulated and
far slower than fp32. docs/performance.md has the figures.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake) or AMX
    (Intel Sapphire Rapids+)."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def cpu_name() -> str:
    """The CPU's model as the system names it (``AMD EPYC 9R14 96-Core Processor``); figures are named by it."""
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def eval_in_bf16(eval_precision: str, device: torch.device) -> bool:
    """Whether the periodic dev evaluations run under bf16 autocast (``trainer.eval_precision``).

    ``auto`` picks bf16 where the hardware computes it natively. It touches only the evaluations that
    track training and pick the best weights: single probabilities move a little in bf16, so a pair
    near the threshold can flip. The saved best weights are always scored again without it for the
    ``final/*`` metrics and the prediction files, and ``fp32`` makes every evaluation exact.
    """
    if eval_precision != "auto":
        return eval_precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def build_accelerator(device: str = "auto", mixed_precision: str = "no", tf32: bool = True):
    """The Accelerator for a run on ``device`` (auto: a GPU when there is one, or cpu)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if tf32 and torch.cuda.is_available():  # TF32 matmuls: ~fp32 accuracy on tensor cores (Ampere+)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if torch.cuda.is_available() and device != "cpu" and hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        # cuDNN's attention builds an execution plan for every new sequence length (length-grouped batches
        # bring dozens), costing more CPU time per step than the GPU spends computing; the flash and
        # memory-efficient kernels SDPA falls back to need no plans
        torch.backends.cuda.enable_cudnn_sdp(False)
    # split_batches: data.eval_batch_size is global, each of N processes evaluates 1/N of every batch
    # (training batches are sharded by our own sampler: see afqmc_exp.training.trainer). non_blocking: evaluation
    # batches (pinned on a GPU) are copied without making the host wait for the kernels queued before them
    accelerator = Accelerator(
        cpu=device == "cpu",
        mixed_precision=mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True),
    )
    warn_about_wasted_precision(accelerator.device, mixed_precision)
    return accelerator


def warn_about_wasted_precision(device: torch.device, mixed_precision: str) -> None:
    """Name mixed precision that a CPU would not turn into speed."""
    if device.type != "cpu":
        return
    if mixed_precision == "fp16":
        log.warning(
            "trainer.mixed_precision=fp16 needs a GPU: this CPU run computes in fp32 (Accelerate ignores "
            "fp16 on CPU). On a CPU with AVX512-BF16 or AMX, trainer.mixed_precision=bf16 is faster."
        )
    elif mixed_precision == "bf16" and not cpu_has_native_bf16():
        log.warning(
            "trainer.mixed_precision=bf16: this CPU has neither AVX512-BF16 nor AMX, so bf16 is emulated "
            "and much slower than fp32; use trainer.mixed_precision=no"
        )


def system_tags(accelerator, eval_bf16: bool) -> dict[str, str]:
    """Library versions and hardware, so a run can be compared and reproduced."""
    import platform

    import accelerate
    import transformers

    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "sys.python": platform.python_version(),
        "sys.torch": torch.__version__,
        "sys.transformers": transformers.__version__,
        "sys.accelerate": accelerate.__version__,
        "sys.device": f"{device.type}: {name}",
        "sys.num_processes": str(accelerator.num_processes),
        "sys.torch_threads": str(torch.get_num_threads()),
        "sys.cpu_native_bf16": str(cpu_has_native_bf16()),
        "sys.eval_precision": "bf16" if eval_bf16 else "fp32",
    }


def pin_parallel_job(job_num: int) -> int | None:
    """A job of a sweep that runs its jobs side by side on one machine (``hydra/launcher=joblib``) trains on GPU
    ``job_num`` modulo the GPUs it sees (``CUDA_VISIBLE_DEVICES`` chooses them), not every job on GPU 0;
    returns that GPU, or None with fewer than two. Accelerate's single-process device is the current one."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    gpu = job_num % torch.cuda.device_count()
    torch.cuda.set_device(gpu)
    log.info("sweep job %d trains on GPU %d of %d", job_num, gpu, torch.cuda.device_count())
    return gpu


def seconds_since_start() -> float:
    """Wall time since this interpreter started (what a user waits before training begins), counted from the
    first import of this package, a few milliseconds after. Not the process's start: ``bash -c 'pip install
    ... && python train.py'`` runs python in the shell's own process, whose start would count the install."""
    from .. import STARTED_AT

    return time.time() - STARTED_AT
