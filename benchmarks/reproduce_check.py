"""Did a rerun reproduce a committed results file? Compare two tidy results files row by row.

Example: rerun the detection protocol from scratch in a clean checkout, then compare its report with the
committed one::

    python benchmarks/reproduce_check.py --old benchmarks/results/sdg_protocol.json \
        --new /path/to/rerun/benchmarks/results/sdg_protocol.json --task det --out reproduce_det

Writes ``benchmarks/results/<out>.md`` and ``<out>.json``: per (task, fidelity, variant) the matched
measurements, how many are bitwise equal and how many within ``--atol``, the largest absolute difference
(in metric units, fractions), the metrics that differ and the rows found on one side only. Exits 0 when
everything matched within ``--atol`` (default 0: bitwise), 1 otherwise, 2 on a bad file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    """Compare, print the table, write the outputs."""
    from drsf_kit.errors import DataError
    from drsf_kit.evaluation.reproduce import compare_rows, reproduced
    from drsf_kit.evaluation.results import read_rows_file
    from drsf_kit.evaluation.tables import frame_to_markdown
    from drsf_kit.utils.io import atomic_write_json, atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the committed results JSON")
    ap.add_argument("--new", required=True, help="the rerun's results JSON")
    ap.add_argument("--task", default=None, help="compare one task's rows only (det or seg)")
    ap.add_argument("--out", default=None, help="write benchmarks/results/<out>.md and .json")
    ap.add_argument("--atol", type=float, default=0.0,
                    help="largest absolute difference that still counts as reproduced (default 0: bitwise)")
    ap.add_argument("--note", default="", help="a line for the report (what was rerun, on which commit)")
    args = ap.parse_args(argv)

    try:
        old, new = read_rows_file(args.old), read_rows_file(args.new)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.task:
        old = [r for r in old if r.get("task") == args.task]
        new = [r for r in new if r.get("task") == args.task]
    for path, rows in ((args.old, old), (args.new, new)):
        if not rows:
            what = f"no rows of task {args.task!r}" if args.task else "no rows"
            print(f"error: {path}: {what} to compare", file=sys.stderr)
            return 2
    try:
        table = compare_rows(old, new, names=(args.old, args.new), atol=args.atol)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    same = reproduced(table)
    within = "bitwise equal" if args.atol == 0 else f"within {args.atol:g} (equal: bitwise)"
    verdict = (f"every measurement matched and is {within}" if same else
               "NOT reproduced: see the rows with close < matched (metrics under differing) or rows on one side only")
    caption = (f"Rerun vs committed results ({len(old)} committed rows, {len(new)} rerun rows"
               f"{', task ' + args.task if args.task else ''}): {verdict}.")
    text = frame_to_markdown(table, caption=caption, index=False)
    print(text)
    if args.out:
        out = ROOT / "benchmarks" / "results" / args.out
        given = list(argv if argv is not None else sys.argv[1:])
        if "--note" in given:  # the note is printed below the command, not inside it
            i = given.index("--note")
            del given[i:i + 2]
        command = "python benchmarks/reproduce_check.py " + " ".join(a for a in given if not a.startswith("--note="))
        header = f"# {args.out}\n\n`{command}`\n\n" + (f"{args.note}\n\n" if args.note else "")
        atomic_write_text(out.with_suffix(".md"), header + text + "\n")
        atomic_write_json(out.with_suffix(".json"), {
            "benchmark": "reproduce_check", "command": command, "note": args.note,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "atol": args.atol, "reproduced": same,
            "rows": table.astype(object).where(table.notna(), None).to_dict(orient="records")})
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
