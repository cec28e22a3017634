"""Compare runs: ``afqmc-report [experiment=NAME | parent=RUN_ID] [out=DIR] [uri=STORE]``.

Prints the comparison of the runs of an experiment (by default the one with the most recent run; the others are
listed) or of the jobs of a sweep (its parent run's id), and writes it as Markdown, CSV and plots: what is
compared and how is ``tracking.comparison``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import help_of, parse_args


@dataclass
class ReportArgs:
    """Compare runs of an MLflow experiment, or the jobs of a sweep, sorted by the objective; seeds pooled."""

    experiment: str | None = field(
        default=None,
        metadata=help_of(
            "an MLflow experiment name (default: the experiment with the most recent run; the others are listed)"
        ),
    )
    parent: str | None = field(default=None, metadata=help_of("a sweep's parent run id: report its jobs"))
    uri: str | None = field(
        default=None, metadata=help_of("the tracking store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    )
    out: str | None = field(
        default=None,
        metadata=help_of(
            "folder for report.md, runs.csv, by_config.csv and plots (default: reports/<experiment or parent id>)"
        ),
    )
    # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """``afqmc-report`` / ``python -m afqmc_exp report``. Returns None: an installed script exits with what its
    entry point returns (``sys.exit(main())``), so anything else would read as a failure."""
    report(parse_args(ReportArgs, sys.argv[1:] if argv is None else argv, "afqmc-report"))


def report(args: ReportArgs) -> Path:
    """Print the report of ``args`` and write its files; returns their folder."""
    from ..tracking import store
    from ..tracking.comparison import NotAReportFolder, NothingToReport, collect, write_report

    try:
        frame, metric, title, chosen = collect(store.client(args.uri, create=False), args.experiment, args.parent)
    except NothingToReport as nothing:
        raise SystemExit(f"error: {nothing}") from None
    except store.StoreUnreachable as down:
        raise SystemExit(f"error: {down}") from None
    except store.StoreMissing as missing:  # the wrong folder, or another program's database: none is made there
        raise SystemExit(f"error: {missing}: run afqmc-report where the runs were trained, or name their store with "
                         "uri=") from None  # fmt: skip
    if chosen:
        print(chosen)
    out = Path(args.out) if args.out else default_out(args.parent or title.split(" ", 1)[1])
    try:
        print(write_report(frame, metric, title, out))
    except NotAReportFolder as refused:
        raise SystemExit(f"error: {refused}") from None
    print(f"wrote {out / 'report.md'}, runs.csv, by_config.csv and plots in {out}")
    return out


def default_out(name: str) -> Path:
    """``reports/<name>``, the name made one folder's: an experiment named by a path (Databricks' ``/Users/a/x``)
    or ``..`` stays under ``reports/``."""
    return Path("reports") / (name.replace("/", "_").lstrip(".") or "_")


if __name__ == "__main__":
    main()
