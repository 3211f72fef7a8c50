"""Attribution throughput: imacs' attribution stage vs the plain captum notebook loop.

Workload (documented in BENCHMARKS.md): N images (PNG on disk, 160x160, resized to the
model input), two small ResNet-style CNNs (seeded random weights), Integrated Gradients with
S steps, target = each model's predicted class, convergence delta recorded. Both contenders
do the same work: decode images, predict, attribute both models, keep maps and deltas.

* baseline: what an engineer writes in a notebook: for each model, for each batch of B
  images, decode the files, ``pred = model(x).argmax(1)``, then
  ``IntegratedGradients(model).attribute(x, target=pred, n_steps=S,
  return_convergence_delta=True)``.
* imacs: the attribution stage of ``imacs.analyze`` (its own timing from run.json), with
  the cache disabled.

Usage: python benchmarks/bench_attribution.py [--arch small|resnet50] [--images 128]
       [--size 96] [--steps 32]
       [--batch 16] [--repeats 2] [--device cpu|cuda] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients
from PIL import Image
from torch import nn

import imacs


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Conv2d(cin, cout, 1, stride, bias=False)
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.skip(x))


class SmallResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.body = nn.Sequential(Block(32, 32, 1), Block(32, 64, 2), Block(64, 128, 2))
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet50(nn.Module):
    """ResNet-50's shape (bottlenecks 3-4-6-3, 25.6 M parameters at 1000 classes), written
    out here because torchvision is not available on the benchmark machine."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )  # fmt: skip
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


ARCHS = {"small": SmallResNet, "resnet50": ResNet50}


def make_workload(
    root: Path, n: int, seed: int = 0, arch: str = "small"
) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(seed)
    for c in range(10):
        (root / "data" / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = (rng.random((160, 160, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "data" / f"c{i % 10}" / f"{i:05d}.png")
    paths = []
    for role in ("a", "b"):
        torch.manual_seed(1 if role == "a" else 2)
        model = ARCHS[arch]().eval()
        p = root / f"model_{role}.pt"
        torch.jit.script(model).save(str(p))
        paths.append(p)
    return root / "data", paths[0], paths[1]


def notebook_loop(
    data: Path, models: list[Path], size: int, steps: int, batch: int, device: str
) -> float:
    files = sorted(data.rglob("*.png"))
    t0 = time.perf_counter()
    for mpath in models:
        model = torch.jit.load(str(mpath)).eval().to(device)
        ig = IntegratedGradients(model)
        for s in range(0, len(files), batch):
            x = torch.stack(
                [
                    torch.from_numpy(
                        np.asarray(
                            Image.open(f).convert("RGB").resize((size, size)), dtype=np.float32
                        )
                        / 255.0
                    ).permute(2, 0, 1)
                    for f in files[s : s + batch]
                ]
            ).to(device)
            with torch.no_grad():
                pred = model(x).argmax(1)
            attr, delta = ig.attribute(x, target=pred, n_steps=steps, return_convergence_delta=True)
            _ = attr.sum(1).cpu().numpy(), delta.cpu().numpy()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def imacs_stage(
    data: Path,
    a: Path,
    b: Path,
    out: Path,
    size: int,
    steps: int,
    batch: int,
    device: str,
    precision: str,
) -> float:
    run = imacs.analyze(
        a, b, data, out, image_size=size, steps=steps, batch_size=batch, device=device,
        precision=precision, projection="pca", cache_dir=None, progress=False, overwrite=True,
    )  # fmt: skip
    return float(run.manifest["timings"]["attribution"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="small")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, a, b = make_workload(root, args.images, arch=args.arch)
        base, ours = [], []
        for r in range(args.repeats):  # alternate, so drift hits both alike
            base.append(notebook_loop(data, [a, b], args.size, args.steps, args.batch, args.device))
            ours.append(
                imacs_stage(
                    data,
                    a,
                    b,
                    root / "run",
                    args.size,
                    args.steps,
                    args.batch,
                    args.device,
                    args.precision,
                )
            )
            print(
                f"repeat {r + 1}: notebook loop {base[-1]:.2f}s, imacs {ours[-1]:.2f}s", flush=True
            )
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "workload": vars(args) | {"json": None},
        "notebook_loop_images_per_s": args.images / min(base),
        "imacs_images_per_s": args.images / min(ours),
        "speedup": min(base) / min(ours),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
