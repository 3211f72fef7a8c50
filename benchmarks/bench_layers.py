"""The cost of the view inside the networks (``imacs.layers``) against attribution's.

Analyses the bundled demo from scratch (a fresh cache: attribution is computed, not read)
and prints each stage's wall seconds from the run's manifest, the layers stage's share of
the attribution stage (both measured in the same run, so under the same load) and the
process's CPU seconds. The issue's goal: the layers stage under half of attribution.

Usage: python benchmarks/bench_layers.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from imacs.demo import demo_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:
            cpu = time.process_time()
            run = demo_run(cache, rebuild=True, progress=False)
            cpu = time.process_time() - cpu
        t = run.info.timings
        print(
            f"run {i + 1}: attribution {t['attribution']:.1f} s, layers {t['layers']:.1f} s "
            f"({t['layers'] / t['attribution']:.0%} of attribution), what-if "
            f"{t['whatif']:.1f} s; the whole analysis {sum(t.values()):.1f} s wall, "
            f"{cpu:.1f} s CPU; load average {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
