"""Build a W&B report for a sweep group and save it to W&B (needs `wandb login`):

    python scripts/wandb_report.py --entity ME --project adamgap --sweep-dir sweeps/table1
    python scripts/wandb_report.py --entity ME --project adamgap --group table1 --dry-run

The group defaults to the sweep directory's name (what its runs were grouped under). With
--sweep-dir the report also holds the sweep's gap table and its grid's phase diagrams.
--dry-run builds the report and prints its outline without contacting W&B.
"""

import argparse
import sys
from pathlib import Path

from adamgap.analysis.wandb_report import build_report, outline
from adamgap.errors import ConfigError

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entity", required=True, help="W&B user or team that owns the project")
    p.add_argument("--project", default="adamgap")
    p.add_argument("--group", help="W&B group of the runs (default: the sweep dir's name)")
    p.add_argument("--sweep-dir", help="the sweep directory (gap table, grid, optimizers)")
    p.add_argument("--title")
    p.add_argument("--dry-run", action="store_true", help="print the outline, save nothing")
    args = p.parse_args()
    group = args.group or (Path(args.sweep_dir).resolve().name if args.sweep_dir else None)
    if group is None:
        p.error("give --group or --sweep-dir")
    try:
        report = build_report(args.entity, args.project, group, args.sweep_dir, args.title)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(outline(report))
    if not args.dry_run:
        report.save()
        print(report.url)
