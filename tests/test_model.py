"""The [CLS]-only last layer gives the same logits and gradients as the full layer."""

import os

import pytest
import torch
from transformers import BertForSequenceClassification

from afqmc_exp.model import enable_cls_only_last_layer
from helpers import tiny_bert_config


def pair(dropout=0.0, **config):
    torch.manual_seed(0)
    cfg = tiny_bert_config(60, dropout, **config)
    full = BertForSequenceClassification(cfg)
    fast = BertForSequenceClassification(cfg)
    fast.load_state_dict(full.state_dict())
    return full, fast


def batch():
    ids = torch.randint(5, 60, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding, which the [CLS] query must not see
    mask[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": (torch.arange(9) > 4).long().expand(4, 9)}


def test_same_logits_and_gradients_and_same_weights():
    full, fast = pair()
    assert enable_cls_only_last_layer(fast)
    inputs = batch()
    for model in (full, fast):
        model.train()
        model(**inputs, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    torch.testing.assert_close(fast(**inputs).logits, full(**inputs).logits, atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(full.named_parameters(), fast.named_parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert list(fast.state_dict()) == list(full.state_dict())


def test_padding_changes_nothing():
    _, fast = pair()
    enable_cls_only_last_layer(fast)
    fast.eval()
    inputs = batch()
    short = {k: v[3:4, :3] for k, v in inputs.items()}
    padded = {k: v[3:4] for k, v in inputs.items()}
    torch.testing.assert_close(fast(**padded).logits, fast(**short).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [{"position_embedding_type": "relative_key"}, {"is_decoder": True}])
def test_not_applied_where_it_would_not_be_exact(config):
    _, fast = pair(**config)
    assert not enable_cls_only_last_layer(fast)


@pytest.mark.parametrize(
    "setting,device,applied",
    [("auto", "cpu", True), ("auto", "cuda", False), (True, "cuda", True), (False, "cpu", False)],
)
def test_the_cls_only_layer_is_applied_where_it_pays_unless_told(tmp_path, setting, device, applied):
    """auto: on CPUs, where it removes compute; not on GPUs, where a step is bound by kernel launches."""
    from afqmc_exp.model import prepare_for_device
    from helpers import tiny_pretrained

    pretrained = tiny_pretrained(tmp_path)
    pretrained.cls_only_last_layer = setting
    prepare_for_device(pretrained, device)
    assert ("forward" in vars(pretrained.model.bert.encoder.layer[-1])) is applied  # patched on the instance


def test_the_repeated_blocks_are_the_encoder_layers():
    """What compile_scope=layers compiles (once for all of them); a model without repeated blocks has none,
    and compile_in_place then compiles the whole model."""
    from afqmc_exp.model import repeated_blocks

    model, _ = pair()
    assert repeated_blocks(model) == list(model.bert.encoder.layer)
    assert repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())) == []


@pytest.mark.parametrize("chosen,kept", [(None, False), ("torch's default", False), ("/somewhere/of/my/own", True)])
def test_compiled_kernels_go_to_the_project_cache_unless_the_user_chose_a_folder(tmp_path, monkeypatch, chosen, kept):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from afqmc_exp.cache import keep_compiled_kernels

    monkeypatch.setenv("AFQMC_EXP_CACHE", str(tmp_path))
    if chosen is None:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir() if chosen == "torch's default" else chosen)
    keep_compiled_kernels()
    expected = chosen if kept else str(tmp_path / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == expected
