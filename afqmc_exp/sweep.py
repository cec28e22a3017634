"""One MLflow parent run per sweep, so the UI shows a multirun as one expandable row.

A Hydra callback (registered in ``conf/train.yaml``) opens the parent run when a multirun starts, in the
launching process and before any job: that also creates a new SQLite store before parallel jobs
(``hydra/launcher=joblib``) could race to create it. The parent's id is written into the sweep folder,
where every job (in this process or another) finds it and nests its own run under it
(``mlflow.parentRunId``). When the sweep ends the parent gets the best child's objective and run id and
is closed FINISHED, or FAILED if a job failed; when a job raises, Hydra's basic sweeper stops and skips
its end-of-sweep callback, and an ``atexit`` hook closes the parent FAILED instead.
"""

from __future__ import annotations

import atexit
import logging
import math
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .masking import Masker
from .metrics import GREATER_IS_BETTER

log = logging.getLogger(__name__)
PARENT_RUN_FILE = "mlflow_parent_run_id"


def parent_run_id(sweep_dir: str | Path) -> str | None:
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.exists() else None


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.run = None
        self.metric = "f1"

    def __getstate__(self) -> dict:
        """Launchers such as joblib send the callbacks to their job processes; the jobs do not need the parent
        run (they find its id in the sweep folder), and its outbox thread cannot travel."""
        return {**self.__dict__, "run": None}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.utils import instantiate

        tracking = instantiate(config.tracking)
        if not tracking.enabled:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.metric = config.trainer.metric
        masker = Masker.from_config(OmegaConf.to_container(config, resolve=False))
        overrides = " ".join(masker.override(o) for o in config.hydra.overrides.task)
        tracking.run_name = f"sweep {sweep_dir.name}"
        self.run = tracking.start(
            {"sweep.overrides": overrides[:6000], "sweep.objective": f"dev_{self.metric}"},
            {
                "sweep.dir": str(sweep_dir.resolve()),
                "sweep.overrides": overrides,
                "sweep.sweeper": OmegaConf.select(config, "hydra.runtime.choices.hydra/sweeper", default="basic"),
            },
            sweep_dir,
            masker=masker,
        )
        (sweep_dir / PARENT_RUN_FILE).write_text(self.run.run_id + "\n")
        atexit.register(self.close, crashed=True)  # Hydra skips on_multirun_end when a job raises

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.close()

    def close(self, crashed: bool = False) -> None:
        """Summarise the children on the parent and close it (FAILED if the sweep crashed); idempotent."""
        if self.run is None:
            return
        run, self.run = self.run, None
        children = run.client.search_runs(
            [run.client.get_run(run.run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'",
            max_results=10000,
        )
        key = f"best/dev_{self.metric}"
        scored = [c for c in children if key in c.data.metrics and not math.isnan(c.data.metrics[key])]
        failed = [c for c in children if c.info.status != "FINISHED"]
        tags = {"sweep.jobs": len(children), "sweep.failed_jobs": len(failed)}
        if scored:
            pick = max if GREATER_IS_BETTER[self.metric] else min
            best = pick(scored, key=lambda c: c.data.metrics[key])
            run.log_metrics({key: best.data.metrics[key]}, step=0)
            tags.update({"sweep.best_run_id": best.info.run_id, "sweep.best_run_name": best.info.run_name})
        run.set_tags(tags)
        status = "FINISHED" if children and not failed and not crashed else "FAILED"
        run.end(status)
        log.info("sweep parent run %s closed %s: %d jobs, %d failed", run.run_id, status, len(children), len(failed))
