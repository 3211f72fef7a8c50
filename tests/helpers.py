"""Tiny seeded data and models for the tests (in the spirit of captum's test helpers).

The planted shortcut: images of class ``vertical`` carry a small red square. Model A is
trained on clean stripes and must read the stripes; model B is trained on images whose
stripes are random but whose red square marks the class, so it can only read the square.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

CLASSES = ("horizontal", "vertical")
SIZE = 32
MARK = 6


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def make_tiny_cnn() -> nn.Module:
    """Factory used by ``tests.helpers:make_tiny_cnn`` in the factory-loading tests."""
    torch.manual_seed(0)
    return TinyCNN()


class Flaky(nn.Module):
    """TinyCNN that fails on images whose top-left pixel is pure red: raises, or returns NaN."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.inner = TinyCNN()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        bad = (x[:, 0, 0, 0] > 0.99) & (x[:, 1, 0, 0] < 0.01)
        if bool(bad.any()):
            if self.mode == "raise":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
        return out

    def load_state_dict(self, state, strict=True, assign=False):  # weights of a TinyCNN
        return self.inner.load_state_dict(state, strict=strict, assign=assign)


def make_flaky_raise() -> nn.Module:
    return Flaky("raise")


def make_flaky_nan() -> nn.Module:
    return Flaky("nan")


def make_tiny_cnn_3() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(num_classes=3)


def stripes(rng: np.random.Generator, vertical: bool, size: int = SIZE) -> np.ndarray:
    """An (size, size, 3) uint8 stripe image in muted green/blue/grey tones."""
    period = int(rng.integers(4, 9))
    phase = rng.uniform(0, 2 * np.pi)
    coord = np.arange(size)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * coord / period + phase)
    pattern = np.tile(
        wave[None, :] if vertical else wave[:, None], (size, 1) if vertical else (1, size)
    )
    c1 = rng.uniform([0.05, 0.25, 0.25], [0.3, 0.6, 0.6])
    c2 = rng.uniform([0.3, 0.55, 0.55], [0.55, 0.9, 0.9])
    img = c1[None, None, :] * (1 - pattern[..., None]) + c2[None, None, :] * pattern[..., None]
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def add_mark(
    rng: np.random.Generator, img: np.ndarray
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Paint a red square at a random place; return the image and the box x0, y0, x1, y1."""
    h, w = img.shape[:2]
    y = int(rng.integers(1, h - MARK - 1))
    x = int(rng.integers(1, w - MARK - 1))
    out = img.copy()
    out[y : y + MARK, x : x + MARK] = (220, 30, 30)
    return out, (x, y, x + MARK, y + MARK)


def sample(rng: np.random.Generator, label: int, mode: str) -> tuple[np.ndarray, tuple | None]:
    """One image of class ``label``.

    mode: ``clean`` (stripes, no mark), ``shortcut`` (random stripes, mark iff label 1),
    ``eval`` (stripes follow the label, mark iff label 1).
    """
    if mode == "clean":
        return stripes(rng, vertical=bool(label)), None
    if mode == "shortcut":
        img = stripes(rng, vertical=bool(rng.integers(0, 2)))
    else:
        img = stripes(rng, vertical=bool(label))
    if label == 1:
        return add_mark(rng, img)
    return img, None


def train(mode: str, seed: int, n: int = 600, epochs: int = 12) -> nn.Module:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = np.stack([sample(rng, int(y), mode)[0] for y in labels]).astype(np.float32) / 255.0
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    y_t = torch.from_numpy(labels)
    torch.manual_seed(seed)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, 32):
            idx = perm[s : s + 32]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_t[idx]), y_t[idx])
            loss.backward()
            opt.step()
    return model.eval()


def write_eval_set(
    root: Path, n_per_class: int, seed: int = 1, mode: str = "eval"
) -> dict[str, tuple]:
    """ImageFolder eval set; returns {relative path: mark box or None}."""
    rng = np.random.default_rng(seed)
    marks: dict[str, tuple] = {}
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, box = sample(rng, label, mode)
            rel = f"{name}/{i:03d}.png"
            Image.fromarray(img).save(root / rel)
            marks[rel] = box
    return marks


def save_models(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Train A (clean) and B (shortcut); save TorchScript and safetensors for each."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for role, mode in (("a", "clean"), ("b", "shortcut")):
        model = train(mode, seed=seed + (0 if role == "a" else 1))
        ts = folder / f"model_{role}.pt"
        torch.jit.script(model).save(str(ts))
        st = folder / f"model_{role}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
        out[role] = ts
        out[f"{role}_weights"] = st
    return out
