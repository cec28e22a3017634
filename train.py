"""Fine-tune a pretrained Transformer on AFQMC: python train.py [group=option ...] [key=value ...]

The same command as ``afqmc-train`` (installed) and ``python -m afqmc_exp train``. See conf/train.yaml for
the groups and README.md for recipes. Returns the best dev value of trainer.metric, which Hydra sweepers
optimise.
"""

from afqmc_exp.commands.train import train_main

if __name__ == "__main__":
    train_main()
