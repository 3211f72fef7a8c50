"""How fast a run answers SQL (imacs.query) and re-ranks on a query's slice.

On a run directory (e.g. one made by ``make_large_run.py``): building the query engine
(once per run and process), a few queries through ``imacs query``'s engine, and the slice
ranking the dashboard computes for a query (statistics with intervals and p-values on the
slice), and slice against slice (``site=north`` vs ``site=south`` and the like, the run's
meta column), best of ``--repeats``, wall and CPU seconds.

Usage: python benchmarks/bench_query.py RUN_DIR [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from imacs.run import load_run
from imacs_app.reader import Filters, RunView

QUERIES = {
    "count patches": "SELECT count(*) FROM patches",
    "A right, B wrong": "SELECT * FROM images WHERE a_correct AND NOT b_correct",
    "reliance per cluster and class": (
        "SELECT i.label, p.cluster, avg(p.diff) AS diff, count(*) AS n "
        "FROM patches p JOIN images i USING (image_id) GROUP BY ALL"
    ),
    "images with cluster 0, A right": "SELECT * FROM images_with_cluster(0) WHERE a_correct",
}
SLICES = {
    "half the images": "SELECT image_id FROM images WHERE image_id % 2 = 0",
    "A right": "SELECT image_id FROM images WHERE a_correct",
    "patches B relies on more": "SELECT patch_id FROM patches WHERE diff > 0",
}


def best(fn, repeats: int) -> tuple[float, float]:
    out = (float("inf"), float("inf"))
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        out = min(out, (time.perf_counter() - w, time.process_time() - c))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    run = load_run(args.run)
    print(f"{args.run}: {len(run.patches)} patches, {len(run.images)} images")
    w, c = best(lambda: run.query_engine, 1)
    print(f"query engine built: wall {w:.2f} s, CPU {c:.2f} s")
    for name, sql in QUERIES.items():
        n = len(run.query(sql))
        w, c = best(lambda sql=sql: run.query(sql), args.repeats)
        print(f"query {name!r}: {n} rows, wall {w * 1000:.0f} ms, CPU {c * 1000:.0f} ms")
    view = RunView(run_id="bench", run=run, level="cluster")
    view.clusters(Filters(query=next(iter(SLICES.values()))))  # warm the view's tables
    for name, sql in SLICES.items():
        f = Filters(query=sql)
        kept = int(view.image_mask(f).sum())

        def rank(f: Filters = f) -> None:
            view._memo.clear()  # every repeat a new filter, as a new query in the page
            view.query_slice(f.query)
            view.clusters(f)

        w, c = best(rank, args.repeats)
        print(f"slice ranking {name!r} ({kept} images): wall {w:.2f} s, CPU {c:.2f} s")
    meta = run.info.meta_columns
    if meta:
        values = run.images[meta[0]].astype(str).value_counts().index[:2]
        x, y = (f"{meta[0]}={v}" for v in values)
        view.shift(Filters(), y)  # warm the slices' queries

        def versus() -> None:
            view._memo.clear()
            view.shift(Filters(query=x), y)

        w, c = best(versus, args.repeats)
        print(f"slice against slice {x!r} vs {y!r}: wall {w:.2f} s, CPU {c:.2f} s")


if __name__ == "__main__":
    main()
