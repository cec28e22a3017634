"""Run by test_token_cache.py: tokenize a file into the token cache ($AFQMC_EXP_CACHE), as a run does.

    python cache_build.py FILE TOKENIZER_FOLDER MAX_LENGTH [KILL_AFTER_CHUNKS]

With KILL_AFTER_CHUNKS the process kills itself (SIGKILL) once that many chunks are written: a kill in the
middle of writing the cache, placed by the test rather than by timing. It prints the number of pairs read.
"""

import logging
import os
import signal
import sys
from pathlib import Path

from transformers import AutoTokenizer

import afqmc_exp.data.token_cache as token_cache
from afqmc_exp.data import ReadSpec

logging.basicConfig(level=logging.INFO, stream=sys.stdout)
path, folder, max_length = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
token_cache.CHUNK_PAIRS = 16
if len(sys.argv) > 4:
    kill_after, written = int(sys.argv[4]), []
    arrays = token_cache._Encoder.arrays

    def arrays_then_die(self, pairs):
        written.append(len(pairs))
        if len(written) > kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return arrays(self, pairs)

    token_cache._Encoder.arrays = arrays_then_die
tokens = token_cache.tokenized_file(path, ReadSpec(), AutoTokenizer.from_pretrained(folder), max_length, True)
print(f"pairs={len(tokens)}")
