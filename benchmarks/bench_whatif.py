"""What-if removal's cost next to the attribution stage, from a run's own timings.

Workload: the synthetic set of ``bench_attribution.py`` (N PNG images of 160x160 random
pixels, resized to the model input; two small ResNet-style CNNs with seeded random
weights, TorchScript), analysed once by ``imacs.analyze`` with the cache disabled. Reported:
``run.json``'s ``timings`` for ``attribution`` and ``whatif``, their ratio, and what the
what-if stage did (clusters tested, images, forward passes per model).

Usage: python benchmarks/bench_whatif.py [--images 256] [--size 64] [--steps 32]
       [--batch 16] [--whatif-top 10] [--baseline black] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import make_workload

import imacs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--whatif-top", type=int, default=10)
    ap.add_argument("--baseline", default="black")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, a, b = make_workload(root, args.images)
        run = imacs.analyze(
            a, b, data, root / "run", image_size=args.size, steps=args.steps,
            batch_size=args.batch, device=args.device, baseline=args.baseline,
            whatif_top=args.whatif_top, projection="pca", cache_dir=None, progress=False,
        )  # fmt: skip
        t = run.manifest["timings"]
        w = run.manifest["whatif"]
        result = {
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__,
            "workload": vars(args) | {"json": None},
            "n_patches": run.manifest["summary"]["n_patches"],
            "n_clusters": run.manifest["summary"]["n_clusters"],
            "whatif_clusters_tested": w["n_clusters"],
            "whatif_images": w["n_images"],
            "whatif_forward_images_per_model": w["n_forward"],
            "attribution_s": t["attribution"],
            "whatif_s": t["whatif"],
            "whatif_over_attribution": t["whatif"] / t["attribution"],
            "total_s": sum(t.values()),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
