"""The best weights a run keeps: the one owner of ``best_model/``, how it is written, and the facts beside it.

``best_model/`` is a ``save_pretrained`` folder (safetensors weights, config, tokenizer) that anyone's
``AutoModelForSequenceClassification.from_pretrained`` loads, plus ``afqmc_exp.json``: the facts needed to use the
weights as they were trained (the task and its labels in class-id order, the file format and fields, the max
length and batch size, the metric and its best value, the base model, the seed, the step; ``weights_facts`` owns
that file's name, defaults and reading). The evaluator keeps the weights when dev improves (:meth:`BestWeights.keep`),
the run adds a tuned threshold (:func:`update_facts`), and ``evaluate``/``predict`` read them (:func:`read_facts`).

Each save replaces the folder atomically (``files.atomic_dir``), so a kill while the new best is written leaves the
previous best whole. A swap a kill interrupted is put right when a run takes its folder (``run.taken``), and by
:func:`read_facts` for readers that do not take it (``files.recover``).
"""

from __future__ import annotations

from pathlib import Path

from ..data import PairData
from ..files import atomic_dir, recover, replaced_file
from ..model import Pretrained
from ..weights_facts import FILE as FACTS_FILE
from ..weights_facts import facts_text
from ..weights_facts import read_facts as read_saved_facts


class BestWeights:
    """The run's ``best_model/`` folder: :meth:`keep` saves ``pretrained`` there with its facts (``facts``, plus the
    step and the metric's value), from the main process; every process calls it (they wait for each other)."""

    def __init__(self, folder: Path, pretrained: Pretrained, facts: dict, accelerator):
        self.folder, self.pretrained, self.facts, self.accelerator = Path(folder), pretrained, facts, accelerator

    @classmethod
    def of_run(cls, folder: Path, pretrained: Pretrained, data: PairData, metric: str, seed: int,
               accelerator) -> BestWeights:  # fmt: skip
        """The best weights of a training on ``data``, picked by ``metric``."""
        facts = {
            "task": data.name,
            "labels": data.labels,  # the data's label values, in class-id order (id2label too)
            "format": data.format,  # how predict.py and evaluate.py read a file by default
            "fields": data.fields,
            "drop_labels": data.drop_labels,
            "max_length": data.max_length,
            "eval_batch_size": data.eval_batch_size,
            "metric": metric,
            "base_model": pretrained.name_or_path,
            "seed": seed,
        }
        return cls(folder, pretrained, facts, accelerator)

    def keep(self, step: int, value: float) -> None:
        """The model as it is now, saved as the best weights of ``step``, where the metric was ``value``."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save(self.pretrained, self.folder, {**self.facts, "step": step, self.facts["metric"]: value},
                 self.accelerator)  # fmt: skip


def save(pretrained: Pretrained, folder: Path, facts: dict, accelerator) -> None:
    """Weights (safetensors), config, tokenizer and their facts, as one ``save_pretrained`` folder."""
    from ..model import quiet_transformers

    with atomic_dir(folder) as staging, quiet_transformers():
        accelerator.unwrap_model(pretrained.model).save_pretrained(staging, safe_serialization=True)
        pretrained.tokenizer.save_pretrained(staging)
        (staging / FACTS_FILE).write_text(facts_text(facts), encoding="utf-8")


def update_facts(folder: Path, **facts) -> None:
    """Add facts learnt after saving (e.g. the tuned threshold) to the best weights' facts."""
    with replaced_file(Path(folder) / FACTS_FILE) as out:
        out.write(facts_text({**read_facts(folder), **facts}))


def read_facts(folder: str | Path) -> dict:
    """The facts saved beside weights (``weights_facts``), once a swap a kill interrupted is put right."""
    recover(Path(folder))
    return read_saved_facts(folder)
