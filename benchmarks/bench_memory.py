"""Peak memory of ``imacs analyze`` as the image count grows.

Workload (documented in BENCHMARKS.md): N random-noise PNG images at 224x224 in two classes,
two tiny seeded CNNs (TorchScript), Integrated Gradients with S steps, PCA projection, the
attribution cache disabled. Each run happens in a fresh child process and reports its peak
resident memory (``ru_maxrss``), so the figure includes torch, the maps and every copy the
pipeline makes of them. The attribution maps alone take N x 224 x 224 x 4 bytes per model
(about 200 MB per model at 1,000 images).

Usage: python benchmarks/bench_memory.py [--images 1000] [--size 224] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def _child(folder: Path, size: int, steps: int) -> None:
    import imacs

    t0 = time.perf_counter()
    imacs.analyze(
        folder / "a.pt",
        folder / "b.pt",
        folder / "data",
        folder / "run",
        image_size=size,
        steps=steps,
        projection="pca",
        cache_dir=None,
        progress=False,
        overwrite=True,
        rebuild=True,
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": round(peak_mb, 1), "seconds": time.perf_counter() - t0}))


def _prepare(folder: Path, images: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        (folder / "data" / c).mkdir(parents=True)
    for i in range(images):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "data" / ("cats", "dogs")[i % 2] / f"{i:05d}.png")
    for role, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 2),
        ).eval()
        torch.jit.script(model).save(str(folder / f"{role}.pt"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child, args.size, args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _prepare(folder, args.images, args.size)
        cmd = [sys.executable, __file__, "--child", str(folder), "--size", str(args.size)]
        out = subprocess.run(
            [*cmd, "--steps", str(args.steps)], capture_output=True, text=True, check=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    maps_mb = args.images * args.size * args.size * 4 / 2**20
    print(
        f"{args.images} images at {args.size}px, {args.steps} steps: peak RSS "
        f"{result['peak_mb']:.0f} MB ({result['seconds']:.0f} s); one model's float32 maps "
        f"are {maps_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
