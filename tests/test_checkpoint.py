"""Checkpoint files: nothing in them is ever executed."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from afqmc_exp.checkpoint import load_last_checkpoint


def test_resume_never_unpickles_code(tmp_path):
    """A tampered trainer_state.pt is refused: it is read with torch.load(weights_only=True)."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = tmp_path / "last_checkpoint"
    folder.mkdir()
    with open(folder / "trainer_state.pt", "wb") as f:
        pickle.dump({"state": Evil()}, f)
    model = torch.nn.Linear(2, 2)
    save_file(model.state_dict(), folder / "model.safetensors")

    class Plain:
        def unwrap_model(self, m):
            return m

    with pytest.raises(pickle.UnpicklingError):
        load_last_checkpoint(folder, model, None, None, Plain())
    assert not (tmp_path / "pwned").exists()
