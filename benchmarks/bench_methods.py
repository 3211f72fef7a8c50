"""What each attribution method (``--method``) costs, in one process, against Integrated
Gradients: the engine's ``attribute`` for a batch of images of a small ResNet, best of a
few repeats, CPU time and wall time (compare the ratios: the machine may be shared).

Usage: python benchmarks/bench_methods.py [--size 64] [--images 16] [--steps 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import SmallResNet

from imacs.attribution import PairedAttribution, Preprocess
from imacs.settings import METHOD_TITLES, AttributionSettings


def timed(engine: PairedAttribution, images: np.ndarray, repeats: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds of one batch's attribution."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        engine.attribute("a", images)
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = SmallResNet().eval()
    images = np.random.default_rng(0).random((args.images, 3, args.size, args.size), np.float32)
    pre = Preprocess(image_size=(args.size, args.size))
    threads = torch.get_num_threads()
    print(f"{args.images} images of {args.size} px, {args.steps} steps, {threads} threads")
    print(f"{'method':<24}{'wall s':>8}{'CPU s':>8}{'x IG':>7}")
    ig = None
    for name, title in METHOD_TITLES.items():
        settings = AttributionSettings(device="cpu", algorithm=name, steps=args.steps)
        engine = PairedAttribution({"a": model}, pre, settings)
        engine.attribute("a", images[:2])  # layout probe and warm-up
        wall, cpu = timed(engine, images, args.repeats)
        ig = ig or cpu
        print(f"{title:<24}{wall:>8.2f}{cpu:>8.2f}{cpu / ig:>7.2f}")


if __name__ == "__main__":
    main()
