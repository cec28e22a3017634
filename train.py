"""Fine-tune a pretrained Transformer on AFQMC: python train.py [group=option ...] [key=value ...]

See conf/train.yaml for the groups and README.md for recipes. Returns the best dev value of
trainer.metric, which Hydra sweepers optimise.
"""

import hydra
from omegaconf import DictConfig

import afqmc_exp  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from afqmc_exp.cli import train_from_config

    return train_from_config(cfg)


if __name__ == "__main__":
    main()
