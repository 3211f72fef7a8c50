"""Dashboard interactions on a large run, as the browser sends them.

Each interaction is a change of the page's state (a visited link, or the state a click led
to: the navigation writes it to the URL) replayed by :class:`page_driver.Page`, which fires
every callback the change reaches, from the app's own callback map, through Flask's test
client: server time plus JSON encoding, without network, and the bytes each way. Every
repeat of an interaction asks something new where it can (another class, another cluster),
so the figures include what a new filter costs. Reports, per interaction, the server time
of the first visit and the median and p95 over the repeats, the largest request body (what
a click uploads) and what comes back.

Usage: python benchmarks/bench_dashboard.py [--patches 100000] [--repeats 10] [--run DIR]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_large_run import make_run
from page_driver import Interaction, Page

from imacs_app.main import create_app

#: interaction name -> the page state of its i-th repeat (run id r)
SCENARIOS: dict[str, Callable[[str, int], str]] = {
    "open the run": lambda r, i: f"?run={r}",
    "new filter: a class": lambda r, i: f"?run={r}&class=class_{i % 10}",
    "new filter: class and meta": lambda r, i: f"?run={r}&class=class_{i % 10}&meta=site%3Dnorth",
    "a query slice": lambda r, i: (
        f"?run={r}&q=SELECT+image_id+FROM+images+WHERE+a_correct+AND+image_id+%25+{i + 2}+%3C%3E+0"
    ),
    "click a concept": lambda r, i: f"?run={r}&concept={i % 10}",
    "click a patch: the image": lambda r, i: f"?run={r}&concept={i % 10}&image={10 * i}",
    "colour the map by B - A": lambda r, i: f"?run={r}&color=diff&class=class_{i % 10}",
    "clusters instead of concepts": lambda r, i: f"?run={r}&level=cluster&cluster={i}",
    "slice against slice": lambda r, i: (
        f"?run={r}&q=site%3Dnorth&vs=site%3Dsouth&class=class_{i % 10}"
    ),
}


def run_scenarios(app: object, run_id: str, repeats: int) -> dict[str, list[Interaction]]:
    """Every scenario ``repeats + 1`` times (the first is the cold one): opening the run on
    a new page, every other from the page the run opened on."""
    out: dict[str, list[Interaction]] = {}
    page = Page(app)
    home = f"?run={run_id}"
    for name, state in SCENARIOS.items():
        out[name] = []
        for i in range(repeats + 1):
            if name == "open the run":
                page = Page(app)
            else:
                page.visit("home", home)
            out[name].append(page.visit(name, state(run_id, i)))
    return out


def _p95(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def report(results: dict[str, list[Interaction]]) -> None:
    print(
        f"{'interaction':32s} {'first':>8s} {'median':>8s} {'p95':>8s} "
        f"{'up max':>8s} {'down':>9s}  slowest callback"
    )
    for name, acts in results.items():
        first, rest = acts[0], acts[1:] or acts
        times = [a.server_ms for a in rest]
        slow = max(acts, key=lambda a: a.server_ms).slowest
        print(
            f"{name:32s} {first.server_ms:6.0f}ms {statistics.median(times):6.0f}ms "
            f"{_p95(times):6.0f}ms {max(a.up for a in acts) / 1e3:6.1f}kB "
            f"{statistics.median(a.down for a in acts) / 1e6:7.2f}MB  "
            f"{slow.outputs[:40]} {slow.ms:.0f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--run", type=Path, help="an existing run directory (else one is made)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            t0 = time.perf_counter()
            run = make_run(Path(tmp) / "big", n_patches=args.patches, current=True)
            print(f"made a {args.patches}-patch run in {time.perf_counter() - t0:.1f} s")
        report(run_scenarios(create_app(run), run.name, args.repeats))
    print(f"machine: {platform.machine()}, python {platform.python_version()}")


if __name__ == "__main__":
    main()
