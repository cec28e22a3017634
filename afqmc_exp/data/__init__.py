"""The ``data`` group: sentence-pair tasks read, checked, tokenized once into a cache, and batched.

* ``formats``: reading and checking each file format (JSON lines, TSV, CSV, a JSON array, Parquet);
* ``download``: the tasks' official archives;
* ``token_cache``: tokenized files on disk, memory-mapped, under an explicit key;
* ``split``: a split as rows of tokenized files;
* ``batching``: samplers, the collator and the loaders;
* ``task``: the config group itself (``PairData``), one option per task in ``conf/data/``.

``AfqmcData`` is the name configs saved before there were several tasks give as their ``_target_``
(``afqmc_exp.data.AfqmcData``): the same class, whose defaults are AFQMC's.
"""

from .batching import (
    LengthGroupedBatchSampler,
    PairCollator,
    auto_eval_batch_size,
    auto_pad_to_multiple_of,
    make_loader,
)
from .formats import DataError, Pair, PairReader, ReadSpec, read_pairs
from .split import Source, Split
from .task import CheckedFile, PairData
from .token_cache import TokenArrays, encode_pairs

AfqmcData = PairData

__all__ = [
    "AfqmcData",
    "CheckedFile",
    "DataError",
    "LengthGroupedBatchSampler",
    "Pair",
    "PairCollator",
    "PairData",
    "PairReader",
    "ReadSpec",
    "Source",
    "Split",
    "TokenArrays",
    "auto_eval_batch_size",
    "auto_pad_to_multiple_of",
    "encode_pairs",
    "make_loader",
    "read_pairs",
]
