"""Run under torchrun by test_multiprocess.py: which pairs does each process see in two epochs?"""

import json
import sys

import torch

from afqmc_exp.data import EncodedPairs, PairExample, make_loader
from afqmc_exp.loop import TrainerConfig, build_accelerator

n, batch_size = int(sys.argv[1]), int(sys.argv[2])
examples = [PairExample("a", "b", i % 2) for i in range(n)]
split = EncodedPairs(examples, [[1] * (3 + i % 17) for i in range(n)], [[0] * (3 + i % 17) for i in range(n)],
                     torch.tensor([e.label for e in examples]))
accelerator = build_accelerator(TrainerConfig(device="cpu"))
loader = make_loader(split, 0, batch_size, train=True, seed=3)
sampler = loader.batch_sampler
loader = accelerator.prepare(loader)
epochs = []
for epoch in range(2):
    loader.set_epoch(epoch)
    sampler.set_epoch(epoch)
    seen = torch.cat([batch["index"] for batch in loader])
    epochs.append(accelerator.gather(seen).tolist())  # the same count on every process
if accelerator.is_main_process:
    print(json.dumps(epochs))
accelerator.end_training()  # destroy the process group before exiting
