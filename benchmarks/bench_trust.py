"""Cost of the trust and agreement stages relative to the attribution stage.

Workload: the synthetic set of bench_attribution.py (N random PNG images, 160x160 resized to
the model input, two small ResNet-style CNNs with seeded random weights), Integrated
Gradients with S steps. One ``imacs.analyze`` with the cache off and the default
``--trust-sample 64`` gives the stage timings from run.json; the trust stage's parts
(deletion/insertion curves, infidelity, sensitivity_max) are timed by wrapping them.

Usage: python benchmarks/bench_trust.py [--images 256] [--size 64] [--steps 32]
       [--trust-sample 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from bench_attribution import make_workload

import imacs
from imacs import trust


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--trust-sample", type=int, default=64)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    parts: dict[str, float] = {}
    for name in ("curves", "infidelity_scores", "sensitivity_scores", "delta_stats"):
        fn = getattr(trust, name)

        def timed(*a, _fn=fn, _name=name, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                parts[_name] = parts.get(_name, 0.0) + time.perf_counter() - t0

        setattr(trust, name, timed)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, a, b = make_workload(root, args.images)
        run = imacs.analyze(
            a, b, data, root / "run", image_size=args.size, steps=args.steps,
            projection="pca", cache_dir=None, progress=False, trust_sample=args.trust_sample,
        )  # fmt: skip
        t = run.manifest["timings"]
        result = {
            "images": args.images,
            "size": args.size,
            "steps": args.steps,
            "trust_sample": args.trust_sample,
            "timings": t,
            "trust_parts": {k: round(v, 3) for k, v in parts.items()},
            "trust_over_attribution": round(t["trust"] / t["attribution"], 4),
            "agreement_over_attribution": round(t["agreement"] / t["attribution"], 4),
            "readings": [run.manifest["trust"][r].get("reading") for r in "ab"],
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
