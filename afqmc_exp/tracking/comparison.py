"""Runs compared: the runs of an MLflow experiment (by default the one with the most recent run) or the jobs of a
sweep (its parent run's id), as tables and figures.

Rows are sorted by the objective (``best/dev_<trainer.metric>``), ties broken by the lower final dev loss, then
the earlier start: with their key params, best step, final dev F1/accuracy/AUC and training speed; then the same
configs with their seeds pooled (mean and sample standard deviation, "—" for a single seed). Both tables are
written as Markdown and CSV, with ``objective_vs_<param>.png`` for every param that varies between the runs.
Two callers: ``afqmc-report`` (``commands.report``) and a sweep's parent run, which gets the same report as
artifacts when the sweep ends (``sweep``); it lives here, beside the store it reads, so the sweep needs no command.
It prints nothing and exits nothing: what there is to say is returned or raised (``NothingToReport``), and the
command says it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..metrics import GREATER_IS_BETTER, SCORES
from ..plots import pyplot

KEY_PARAMS = {
    "model": "model.name_or_path",
    "lr": "optim.lr",
    "batch": "data.batch_size",
    "seed": "seed",
    "epochs": "trainer.epochs",
    "max_steps": "trainer.max_steps",
    "scheduler": "scheduler.name",
    "warmup": "scheduler.warmup_ratio",
    "weight_decay": "optim.weight_decay",
    "max_length": "data.max_length",
}
# params that differ between runs without being part of the experiment's design
NOT_DESIGN = (
    "hydra",
    "data.dir",
    "tracking.",
    "resume",
    "rerun",
    "model.name_or_path",
    "trainer.progress_bar",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.keep_last_checkpoint",
    "data.num_workers",
    "optuna.",  # a search's plumbing: which trial of which study a job is (its values are swept keys of their own)
)


class NothingToReport(LookupError):
    """No such experiment, or no runs in it; the message says what there is and what to do."""


def runs_to_report(client, experiment: str | None, parent: str | None) -> tuple[list, str, str | None]:
    """The runs (a sweep's jobs, or an experiment's runs that are not sweep parents), what they are, and, when the
    experiment was chosen here, which one and which others there are."""
    if parent:
        experiment_id = client.get_run(parent).info.experiment_id
        runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  max_results=50000)  # fmt: skip
        return runs, f"parent run {parent}", None
    found, chosen = (client.get_experiment_by_name(experiment), None) if experiment else latest_experiment(client)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise NothingToReport(f"no MLflow experiment named {experiment!r} (experiments: {names})")
    runs = client.search_runs([found.experiment_id], max_results=50000)
    return [r for r in runs if "sweep.dir" not in r.data.tags or "mlflow.parentRunId" in r.data.tags], \
        f"experiment {found.name}", chosen  # fmt: skip


def latest_experiment(client) -> tuple:
    """The experiment whose most recent run started last, and a line naming it and the others."""
    latest = []
    for experiment in client.search_experiments():
        newest = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
        if newest:
            latest.append((newest[0].info.start_time, experiment))
    if not latest:
        raise NothingToReport("no runs in this store yet; train first (afqmc-train experiment=quickstart)")
    latest.sort(key=lambda pair: pair[0], reverse=True)
    others = ", ".join(e.name for _, e in latest[1:])
    return latest[0][1], f"reporting experiment {latest[0][1].name!r}" + (
        f" (also here: {others}; pick one with experiment=NAME)" if others else "")  # fmt: skip


def collect(client, experiment: str | None, parent: str | None):
    """Rows of the runs to compare (finished or not), sorted; the objective's name; what the runs are; which
    experiment was chosen (None when it was named)."""
    runs, title, chosen = runs_to_report(client, experiment, parent)
    if not runs:
        raise NothingToReport(f"no runs to report in {title}")
    metric = runs[0].data.params.get("trainer.metric", "f1")  # runs logged before there were tasks: AFQMC's F1
    return rows_of(runs, metric), metric, title, chosen


def rows_of(runs, metric: str):
    """One row per run, best first: by the objective, then the lower final dev loss, then the earlier start."""
    import pandas as pd

    rows = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        model = Path(params.get(KEY_PARAMS["model"], "")).name
        choices = json.loads(run.data.tags.get("hydra.choices", "{}"))  # which option of each group: a design param
        own_metric = params.get("trainer.metric", metric)  # a sweep over tasks: each its own
        row = {
            "run": run.info.run_name,
            "run_id": run.info.run_id,
            "status": run.info.status,
            "task": choices.get("data") or params.get("data.name", "afqmc"),
            "metric": own_metric,
            "objective": metrics.get(f"best/dev_{own_metric}"),
            "dev_loss": metrics.get("final/dev_loss"),
            "started": run.info.start_time,
            "best_step": metrics.get("best/step"),
            **{score: metrics.get(f"final/dev_{score}") for score in SCORES},
            "samples_per_s": metrics.get("speed/train_samples_per_s"),
        }
        row.update({name: params.get(key) for name, key in KEY_PARAMS.items()})
        row["model"] = choices.get("model") or model
        row["_params"] = {
            **params,
            **{group: option for group, option in choices.items() if "/" not in group and option},
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    ascending = [True, not GREATER_IS_BETTER[metric], True, True]  # tasks apart: objectives compare within one
    return frame.sort_values(["task", "objective", "dev_loss", "started"], ascending=ascending, na_position="last")


def varying_params(frame) -> list[str]:
    """Design params (dotted config keys) whose value differs between the runs. Between tasks, a ``data.*`` key
    counts only where it varies within one task (the task itself is the ``data`` option)."""
    params = list(frame["_params"])
    keys = set.intersection(*(set(p) for p in params))  # keys newer versions added do not count

    def varies(key: str) -> bool:
        if key.startswith("data.") and "data" in keys:
            return any(len({p.get(key) for p in params if p.get("data") == task}) > 1 for task in frame["task"])
        return len({p.get(key) for p in params}) > 1

    return sorted(k for k in keys if not k.startswith(NOT_DESIGN) and varies(k))


def by_config(frame, varying: list[str]):
    """Runs that differ only in their seed, pooled: mean and std of the objective and metrics."""
    import pandas as pd

    design = [k for k in varying if k != "seed"]
    frame = frame.assign(config=[" ".join(f"{k}={p.get(k)}" for k in design) or "(all)" for p in frame["_params"]])
    grouped = frame.groupby("config", dropna=False)
    table = pd.DataFrame(
        {
            "runs": grouped.size(),
            "seeds": grouped["seed"].apply(lambda s: ",".join(sorted(map(str, s)))),
            "objective_mean": grouped["objective"].mean(),
            "objective_std": grouped["objective"].std(ddof=1),  # sample std: NaN ("—") for a single seed
            **{f"{score}_mean": grouped[score].mean() for score in SCORES},
        }
    ).reset_index()
    return table


def plot_params(frame, varying: list[str], metric: str, out: Path) -> list[Path]:
    plt = pyplot()

    paths = []
    for key in [k for k in varying if k != "seed"]:
        values = [p.get(key) for p in frame["_params"]]
        try:
            xs, categorical = [float(v) for v in values], False
        except (TypeError, ValueError):
            labels = sorted(set(map(str, values)))
            xs, categorical = [labels.index(str(v)) for v in values], True
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.scatter(xs, frame["objective"], alpha=0.8)
        if categorical:
            ax.set_xticks(range(len(labels)), labels, rotation=20)
        elif key.endswith(".lr") and min(xs) > 0:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=f"best dev {metric}", title=f"{metric} vs {key}")
        fig.tight_layout()
        path = out / f"objective_vs_{key.replace('.', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def fmt(frame) -> str:
    """A Markdown table; a missing value (NaN too: one seed's standard deviation) is "—"."""
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="—")


RUN_COLUMNS = ["run", "status", "task", "metric", "objective", "best_step", *SCORES, "dev_loss", "samples_per_s",
               "model", "lr", "batch", "seed", "epochs", "max_steps", "run_id"]  # fmt: skip


class NotAReportFolder(ValueError):
    """``out`` holds something other than a report (a user's folder, a file): a report replaces only a report."""


def is_report_file(path: Path) -> bool:
    """A report's own file, or what a desktop leaves beside one (``.DS_Store``, an office suite's ``.~lock``)."""
    return path.name.startswith(".") or path.name in ("Thumbs.db", "desktop.ini") or path.is_file() and (
        path.name in ("report.md", "runs.csv", "by_config.csv")
        or (path.name.startswith("objective_vs_") and path.suffix == ".png"))  # fmt: skip


def write_report(frame, metric: str, title: str, out: Path) -> str:
    """report.md, runs.csv, by_config.csv and one plot per varying param, written whole into ``out``, which they
    replace (``files.atomic_dir``: no plot of an earlier report left beside them, an interrupted write leaves the
    earlier one); returns the Markdown. An ``out`` that holds anything else is refused (:class:`NotAReportFolder`)."""
    from ..files import atomic_dir

    if out.exists() and not out.is_dir():
        raise NotAReportFolder(f"out={out}: is a file, not a report's folder; give a new out=")
    if Path.cwd().is_relative_to(out.absolute()):  # replaced whole, it would take the folder the command stands in
        raise NotAReportFolder(f"out={out}: is the current folder (or holds it); give a new out=")
    others = [p.name for p in out.iterdir() if not is_report_file(p)] if out.is_dir() else []
    if others:
        raise NotAReportFolder(f"out={out}: holds {', '.join(sorted(others)[:3])}, not a report's files (a report "
                               "replaces only an earlier report); give a new out=")  # fmt: skip
    varying = varying_params(frame)
    runs, grouped = frame[RUN_COLUMNS], by_config(frame, varying)
    text = (
        f"# Runs of {title}\n\nObjective: best dev {metric} "
        f"({'higher' if GREATER_IS_BETTER[metric] else 'lower'} is better). "
        f"Varying: {', '.join(varying) or 'nothing'}.\n\n"
        f"{fmt(runs)}\n\n## Seeds pooled (mean ± std of the objective)\n\n{fmt(grouped)}\n"
    )
    with atomic_dir(out) as staging:
        runs.to_csv(staging / "runs.csv", index=False, float_format="%.6g")
        grouped.to_csv(staging / "by_config.csv", index=False, float_format="%.6g", na_rep="—")
        plot_params(frame, varying, metric, staging)
        (staging / "report.md").write_text(text)
    return text
