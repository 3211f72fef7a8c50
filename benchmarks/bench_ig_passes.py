"""Why imacs sizes IG passes small and uses channels-last on a CPU.

Times captum's ``IntegratedGradients.attribute`` for 16 images x 32 steps with different
``internal_batch_size`` values (scaled inputs per forward/backward pass; 512 = captum's
default of one pass for everything) and both memory layouts.

Usage: python benchmarks/bench_ig_passes.py [--sizes 32 64 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from captum.attr import IntegratedGradients

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import SmallResNet


def best_time(model: torch.nn.Module, x: torch.Tensor, ibs: int, repeats: int) -> float:
    ig = IntegratedGradients(model)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ig.attribute(x, target=0, n_steps=32, internal_batch_size=ibs)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--passes", type=int, nargs="+", default=[16, 32, 64, 128, 512])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        "seconds for 16 images x 32 steps"
    )
    print("| input | layout | " + " | ".join(f"pass {p}" for p in args.passes) + " |")
    print("|---|---|" + "---|" * len(args.passes))
    for size in args.sizes:
        x = torch.rand(16, 3, size, size)
        for layout in ("NCHW", "channels-last"):
            torch.manual_seed(0)
            model = SmallResNet().eval()
            for p in model.parameters():
                p.requires_grad_(False)
            xx = x
            if layout == "channels-last":
                model = model.to(memory_format=torch.channels_last)
                xx = x.contiguous(memory_format=torch.channels_last)
            times = [best_time(model, xx, p, args.repeats) for p in args.passes]
            print(
                f"| {size}x{size} | {layout} | " + " | ".join(f"{t:.2f}" for t in times) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
