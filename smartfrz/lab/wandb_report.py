"""A W&B report comparing freezing methods, one section per experiment (a W&B run group).

    python -m smartfrz.lab.wandb_report --entity ENTITY --project smartfrz --experiments cifar10-resnet18 sst2-minilm

Each section shows the frozen FLOP share, eval metric and loss over steps, accuracy against savings
and against wall time, the per-run freeze timeline images and event tables, over runs grouped by
method. ``build_report_spec`` only builds the report object (no network, testable); ``publish``
saves it and needs a W&B login and the runs uploaded (``wandb sync`` for offline ones).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from .wandb_logging import STEP_KEY, logged_in

METRIC = "final/metric"  # summary keys written by WandbLogger.log_fit / summarize()
SAVING = "smartfrz/avg_frozen_flop_share"
COLUMNS = ["config:method.value", f"summary:{METRIC}", f"summary:{SAVING}", "summary:smartfrz/frozen_units",
           "summary:wall_s", "summary:steps"]


def _runset(wr, entity: str, project: str, name: str, filters: str = "", groupby=("config.method",)):
    return wr.Runset(entity=entity, project=project, name=name, filters=filters, groupby=list(groupby),
                     pinned_columns=list(COLUMNS[:1]), visible_columns=list(COLUMNS))


def experiment_panels(wr, metric: str = METRIC, saving: str = SAVING) -> list:
    """The comparison panels of one experiment; the runset decides which runs they show."""
    line = lambda title, y: wr.LinePlot(title=title, x=STEP_KEY, y=[y], title_x="step", layout=wr.Layout(w=8, h=6))
    return [
        line("Frozen share of forward FLOPs", "train/frozen_flop_share"),
        line("Eval metric", "eval/metric"),
        line("Train loss", "train/loss"),
        wr.ScatterPlot(title="Final metric against compute saved", x=wr.SummaryMetric(saving),
                       y=wr.SummaryMetric(metric), layout=wr.Layout(w=12, h=8)),
        wr.ScatterPlot(title="Final metric against wall time", x=wr.SummaryMetric("wall_s"), y=wr.SummaryMetric(metric),
                       layout=wr.Layout(w=12, h=8)),
        wr.MediaBrowser(title="Freeze timelines (units × steps)", media_keys=["smartfrz/freeze_timeline"],
                        num_columns=2, layout=wr.Layout(w=24, h=10)),
        wr.WeavePanelSummaryTable(table_name="smartfrz/freeze_events", layout=wr.Layout(w=24, h=10)),
    ]


def build_report_spec(entity: str, project: str, experiments: Sequence[str], *,
                      title: str = "SmartFRZ: freezing methods compared", description: str | None = None,
                      metric: str = METRIC, saving: str = SAVING):
    """The report as a ``wandb_workspaces.reports.v2.Report``, built without any network call."""
    import wandb_workspaces.reports.v2 as wr

    experiments = list(dict.fromkeys(experiments))
    if not experiments:
        raise ValueError("no experiments: pass the run groups to compare (WandbLogger(group=...))")
    blocks = [
        wr.P("Runs are grouped by experiment (W&B group) and by method (config.method). "
             f"Compute saved is `{saving}`: the time-averaged share of forward FLOPs in frozen units, "
             "i.e. the share of backward compute that freezing skipped."),
        wr.TableOfContents(),
    ]
    for exp in experiments:
        blocks += [wr.H2(exp), wr.PanelGrid(runsets=[_runset(wr, entity, project, exp, f"Metric('Group') == {exp!r}")],
                                            panels=experiment_panels(wr, metric, saving))]
    everything = _runset(wr, entity, project, "All experiments", groupby=("group", "config.method"))
    blocks += [wr.H2("All experiments"),
               wr.PanelGrid(runsets=[everything], panels=[
                   wr.ScatterPlot(title="Final metric against compute saved", x=wr.SummaryMetric(saving),
                                  y=wr.SummaryMetric(metric), layout=wr.Layout(w=24, h=8))])]
    return wr.Report(entity=entity, project=project, title=title[:128], blocks=blocks,
                     description=description or f"Methods compared on {', '.join(experiments)}", width="fluid")


def discover_experiments(entity: str, project: str, api=None) -> list[str]:
    """The run groups of a project, from the W&B server."""
    import wandb
    api = api or wandb.Api(timeout=30)
    return sorted({r.group for r in api.runs(f"{entity}/{project}") if r.group})


def publish(entity: str | None, project: str, experiments: Sequence[str] | None = None, *, draft: bool = False,
            **spec_kw) -> str:
    """Builds and saves the report; returns its URL. Needs a W&B login."""
    import wandb
    api = wandb.Api(timeout=30)
    entity = entity or api.default_entity
    experiments = list(experiments or discover_experiments(entity, project, api))
    if not experiments:
        raise RuntimeError(f"no grouped runs in {entity}/{project}: log with WandbLogger(group=...) and sync them")
    report = build_report_spec(entity, project, experiments, **spec_kw)
    report.save(draft=draft)
    return report.url


def unsynced_offline_runs(root: str | os.PathLike) -> list[Path]:
    """Offline run folders under ``root`` that ``wandb sync`` has not uploaded yet (no ``.synced`` marker)."""
    return sorted(d for d in Path(root).glob("offline-run-*")
                  if d.is_dir() and not any(d.glob("*.wandb.synced")))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smartfrz.lab.wandb_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--entity", default=os.getenv("WANDB_ENTITY"), help="W&B entity (default: your default entity)")
    p.add_argument("--project", default=os.getenv("WANDB_PROJECT", "smartfrz"))
    p.add_argument("--title", default="SmartFRZ: freezing methods compared")
    p.add_argument("--experiments", nargs="*", default=None, help="run groups to compare (default: all in the project)")
    p.add_argument("--wandb-dir", default=str(Path(os.getenv("WANDB_DIR", ".")) / "wandb"),
                   help="where offline runs are looked for (default: $WANDB_DIR/wandb or ./wandb)")
    p.add_argument("--draft", action="store_true", help="save as a draft")
    p.add_argument("--allow-unsynced", action="store_true", help="publish even if offline runs are not uploaded")
    p.add_argument("--dry-run", action="store_true", help="build the report locally and print it; no network")
    a = p.parse_args(argv)
    try:
        import wandb_workspaces.reports.v2  # noqa: F401
    except ImportError:
        print("error: building a report needs wandb-workspaces: pip install wandb-workspaces", file=sys.stderr)
        return 1
    if a.dry_run:
        if not a.experiments:
            p.error("--dry-run needs --experiments (finding them asks the W&B server)")
        print(build_report_spec(a.entity or "ENTITY", a.project, a.experiments, title=a.title))
        return 0
    unsynced = unsynced_offline_runs(a.wandb_dir)
    sync = f"  wandb sync {Path(a.wandb_dir) / 'offline-run-*'}" if unsynced else ""
    mode = os.getenv("WANDB_MODE", "").lower()
    offline = mode in ("offline", "dryrun", "disabled")
    if offline or not logged_in():
        why, fix = (f"WANDB_MODE={mode}", "unset WANDB_MODE") if offline else ("not logged in to W&B", "wandb login")
        msg = f"error: {why}, but a report is saved on the W&B server. First:\n  {fix}"
        if unsynced:
            msg += f"\nthen upload the {len(unsynced)} offline run(s):\n{sync}"
        print(msg, file=sys.stderr)
        return 2
    if unsynced and not a.allow_unsynced:
        print(f"error: {len(unsynced)} offline run(s) under {a.wandb_dir} are not uploaded, so the report would "
              f"miss them. Upload them first (or pass --allow-unsynced):\n{sync}", file=sys.stderr)
        return 2
    try:
        url = publish(a.entity, a.project, a.experiments, title=a.title, draft=a.draft)
    except Exception as e:  # noqa: BLE001 - a clear line, not a traceback
        print(f"error: could not publish the report to {a.entity or '<default entity>'}/{a.project}: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(lambda argv: sys.exit(main(argv)))
