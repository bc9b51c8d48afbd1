"""``ssp-report``: tables and the results page from run files, without running anything.

    ssp-report runs/cars                         # accuracy and calibration tables of every run under runs/cars
    ssp-report runs/cars runs/b2n --html site/   # ... and the results page site/index.html (opens from disk)
"""
from __future__ import annotations

import argparse
import sys

from ssp.cli._args import with_cli_messages

PROG = "ssp-report"

# The report stage (matplotlib) is imported inside _main, after parsing: `ssp-report --help` stays fast.


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Print the accuracy and reliability tables of run files (written by ssp-fewshot or "
                               "ssp-reproduce) and, with --html, write the self-contained results page.")
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run folders (searched recursively) or *.run.json files")
    p.add_argument("--html", metavar="DIR", help="write the results page DIR/index.html (plots in DIR/plots/)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ssp.report.reliability import format_calibration_table, load_run_files
    from ssp.report.tables import format_table, summarize
    from ssp.run.records import RUN_SUFFIX

    try:
        runs = load_run_files(args.runs)
        if not runs:
            print(f"{PROG}: error: no run results (*{RUN_SUFFIX}) under {' '.join(args.runs)}; pass folders written "
                  "by ssp-fewshot or ssp-reproduce", file=sys.stderr)
            return 2
        records = [r for _, r in runs]
        print(format_table(summarize(records)))
        calibration = format_calibration_table(records)
        print("\n" + (calibration or "(no reliability metrics recorded in these runs: made before ssp recorded them)"))
        if args.html:
            from ssp.report.html import write_results_page

            print(f"\nresults page: {write_results_page(runs, args.html)}")
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


main = with_cli_messages(_main)

if __name__ == "__main__":
    sys.exit(main())
