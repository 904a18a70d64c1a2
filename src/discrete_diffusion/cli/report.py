"""``ddiff report``: the PNG and HTML summary of a run directory."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    report, paths = write_report(args.run_dir, args.out, args.samples, args.metric)
    for note in report.notes:
        print(f"note: {note}")
    print(f"png:  {paths['png']}\nhtml: {paths['html']}")
    return 0
