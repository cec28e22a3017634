"""Run under torchrun by test_multiprocess.py: which pairs does each process see in two epochs?"""

import json
import sys

from accelerate.utils import gather_object

from afqmc_exp.data import make_loader
from afqmc_exp.training.hardware import build_accelerator
from helpers import token_split

n, batch_size = int(sys.argv[1]), int(sys.argv[2])
split = token_split([[1] * (3 + i % 17) for i in range(n)])
accelerator = build_accelerator(device="cpu")
loader = make_loader(
    split, 0, batch_size, train=True, seed=3, num_shards=accelerator.num_processes, shard=accelerator.process_index
)  # as the Trainer builds it
epochs = []
for epoch in range(2):
    loader.batch_sampler.set_epoch(epoch)
    slices = [batch["index"].tolist() for batch in loader]
    epochs.append(gather_object([slices]))  # per process: its slice of each global batch
if accelerator.is_main_process:
    print(json.dumps(epochs))
accelerator.end_training()  # destroy the process group before exiting
