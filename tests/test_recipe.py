"""The ``auto`` settings of a run decided once for its device (``training/recipe.py``): the evaluations' precision,
the background checkpoint writer, and the data's evaluation batch and padding multiple."""

import pytest
import torch

from afqmc_exp.data import PairData
from afqmc_exp.training import hardware
from afqmc_exp.training.recipe import Recipe, TrainerConfig


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_evaluates_in_bf16_where_the_cpu_computes_it_natively(monkeypatch, native_bf16):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native_bf16)
    decided = TrainerConfig(eval_precision="auto").for_device(torch.device("cpu"))
    assert decided.eval_precision == ("bf16" if native_bf16 else "fp32")
    assert TrainerConfig(eval_precision="fp32").for_device(torch.device("cpu")).eval_precision == "fp32"


def test_checkpoints_are_written_in_the_background_on_a_gpu_only_unless_chosen():
    auto = TrainerConfig(checkpoint_in_background="auto", eval_precision="fp32")
    assert auto.for_device(torch.device("cuda")).checkpoint_in_background is True
    assert auto.for_device(torch.device("cpu")).checkpoint_in_background is False
    chosen = TrainerConfig(checkpoint_in_background=True, eval_precision="fp32")
    assert chosen.for_device(torch.device("cpu")).checkpoint_in_background is True


def test_a_recipe_decides_its_data_and_its_trainer_for_the_device(tmp_path):
    recipe = Recipe(data=PairData(dir=str(tmp_path)), load_model=None, make_optimizer=None, make_scheduler=None,
                    trainer=TrainerConfig(eval_precision="fp32"), seed=1)  # fmt: skip
    on_gpu = recipe.for_device(torch.device("cuda"))
    assert (on_gpu.data.eval_batch_size, on_gpu.data.pad_to_multiple_of) == (256, 8)
    assert on_gpu.trainer.checkpoint_in_background is True and recipe.data.eval_batch_size == "auto"
