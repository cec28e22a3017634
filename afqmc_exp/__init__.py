"""afqmc-exp: Hydra-configured, MLflow-tracked fine-tuning of pretrained Transformers on AFQMC.

Importing the package registers the OmegaConf resolvers the configs use (see ``resolvers``); it imports
nothing heavy, so ``python train.py --help`` stays fast.
"""

import time

STARTED_AT = time.time()  # this interpreter's start, near enough: see hardware.seconds_since_start

from . import resolvers  # noqa: E402, F401  (registers the configs' ${afqmc.*:} resolvers, listed there)

__version__ = "0.1.0"
