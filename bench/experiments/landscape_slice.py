"""A recording's landscape around its optimum: two params varied, the others held at the optimum's values.

    python bench/experiments/landscape_slice.py ../shared/bench/replay/convolution_milo_A100.json.gz \
        block_size_x block_size_y

Prints time / optimum for each pair of values ("---" where the config is outside the space or failed).
It shows what a search is up against where the optimum is a needle: whether its neighbours point to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cotune.tuner.search.replay import load_recording


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", type=Path)
    ap.add_argument("rows")
    ap.add_argument("columns")
    args = ap.parse_args()
    data = load_recording(args.file)
    keys = list(data.keys)
    unknown = [p for p in (args.rows, args.columns) if p not in keys]
    if unknown:
        raise SystemExit(f"{data.name} has no param {', '.join(map(repr, unknown))}; its params: {', '.join(keys)}")
    best = data.top(1)[0]
    values = {p: data.values[p] for p in (args.rows, args.columns)}
    print(f"{data.name}: optimum {best}, {data.optimum:.4g}; time / optimum with the other params held")
    print(f"{args.rows} \\ {args.columns}".ljust(24) + "".join(f"{v!s:>8}" for v in values[args.columns]))
    for r in values[args.rows]:
        cells = []
        for c in values[args.columns]:
            record = data.records.get(tuple({**best, args.rows: r, args.columns: c}[k] for k in keys))
            failed = record is None or record.time_ms is None
            cells.append("     ---" if failed else f"{record.time_ms / data.optimum:8.3f}")
        print(f"{r!s:<24}" + "".join(cells))


if __name__ == "__main__":
    main()
