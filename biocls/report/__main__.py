"""``python -m biocls.report RESULTS_DIR [OUT_DIR]``: render the reports without the full CLI."""

from __future__ import annotations

import argparse
import sys

from biocls._errors import BioclsError
from biocls.report._render import render_reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m biocls.report", description=__doc__)
    parser.add_argument("results", help="results/<experiment> folder")
    parser.add_argument(
        "out", nargs="?", default=None, help="output folder (default: RESULTS/reports)"
    )
    parser.add_argument("--config-hash", help="the experiment's config hash, shown on every page")
    args = parser.parse_args(argv)
    try:
        paths = render_reports(args.results, args.out, config_hash=args.config_hash)
    except BioclsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} pages to {paths[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
