"""Tiny seeded data and models for the tests (in the spirit of captum's test helpers).

The planted shortcut: images of class ``vertical`` carry a small red square. Model A is
trained on clean stripes and must read the stripes; model B is trained on images whose
stripes are random but whose red square marks the class, so it can only read the square.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


def make_tiny_cnn_other() -> nn.Module:
    """An untrained TinyCNN with other weights than :func:`make_tiny_cnn`'s: a second model
    for tests that need two models but no training."""
    torch.manual_seed(1)
    return TinyCNN()


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


def train(mode: str, seed: int, n: int = 600, epochs: int = 12, draw=None, build=None) -> nn.Module:
    """A TinyCNN (or ``build()``'s model) trained on ``n`` images from ``draw(rng, label,
    mode)`` (default :func:`sample`)."""
    draw = draw or sample
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = np.stack([draw(rng, int(y), mode)[0] for y in labels]).astype(np.float32) / 255.0
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    y_t = torch.from_numpy(labels)
    torch.manual_seed(seed)
    model = (build or TinyCNN)()
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


# --- three looks of one shortcut (concepts) -------------------------------------------
#: model B's shortcut for ``vertical`` comes in three looks; model A's shortcut for
#: ``horizontal`` is a fourth, different mark
LOOKS = ("red square", "yellow disc", "magenta bar")
#: side of model A's cross: larger than a patch, so A's attribution spreads over several
CROSS = 13


def paint(img: np.ndarray, look: str, x: int, y: int) -> tuple[int, int, int, int]:
    """Paint one look of a mark with its top-left corner at (x, y); return its box."""
    s = CROSS if look == "blue cross" else MARK + 1
    yy, xx = np.mgrid[0:s, 0:s]
    h = s // 2
    if look == "red square":
        mask, colour = np.ones((s, s), bool), (220, 30, 30)
    elif look == "yellow disc":
        mask, colour = (yy - 3) ** 2 + (xx - 3) ** 2 <= 10, (235, 220, 20)
    elif look == "magenta bar":
        mask, colour = (yy >= 2) & (yy <= 4), (210, 30, 210)
    elif look == "blue cross":  # model A's shortcut
        mask, colour = (np.abs(yy - h) <= 1) | (np.abs(xx - h) <= 1), (20, 30, 245)
    else:
        raise ValueError(look)
    region = img[y : y + s, x : x + s]
    region[mask] = colour
    return (x, y, x + s, y + s)


def looks_sample(
    rng: np.random.Generator, label: int, mode: str
) -> tuple[np.ndarray, str | None, tuple[int, int, int, int] | None]:
    """One image for the three-looks set.

    mode ``a`` (model A's training: stripes follow the label, a blue cross on every label-0
    image, and one of :data:`LOOKS` on half the images whatever the label, so A reads the
    cross and the stripes and ignores the looks), ``b``
    (model B's: random stripes, one of :data:`LOOKS` iff label 1, the cross on half the
    images whatever the label) or ``eval`` (stripes follow the label; label 1 carries one
    of the looks, label 0 the cross).
    """
    vertical = bool(label) if mode != "b" else bool(rng.integers(0, 2))
    img = stripes(rng, vertical=vertical)
    x, y = (int(v) for v in rng.integers(1, SIZE - CROSS - 1, 2))
    any_look = LOOKS[int(rng.integers(0, len(LOOKS)))]
    shortcut = {"a": "blue cross", "b": any_look, "eval": None}[mode]
    look = (any_look if label == 1 else "blue cross") if mode == "eval" else None
    if mode != "eval":
        look = shortcut if label == int(mode == "b") else None
        decoy = any_look if mode == "a" else "blue cross"
        if rng.random() < 0.5:  # the other model's shortcut, on any class
            dx, dy = (int(v) for v in rng.integers(1, SIZE - CROSS - 1, 2))
            paint(img, decoy, dx, dy)
    box = paint(img, look, x, y) if look else None
    return img, look, box


def train_looks(mode: str, seed: int, n: int = 900, epochs: int = 12) -> nn.Module:
    return train(mode, seed, n, epochs, draw=looks_sample)


def write_looks_set(root: Path, models: Path, n_per_class: int = 60, seed: int = 5) -> dict:
    """The three-looks eval set (ImageFolder) and both models (TorchScript, and their
    weights for the factory ``tests.helpers:make_tiny_cnn`` as ``a_weights``, ``b_weights``).

    Returns ``{"a", "b", "a_weights", "b_weights", "data", "looks": {relpath: look},
    "boxes": {relpath: x0, y0, x1, y1 of the mark}}``.
    """
    models.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    from safetensors.torch import save_file

    for role in ("a", "b"):
        path = models / f"looks_{role}.pt"
        model = train_looks(role, seed=seed + (role == "b"))
        torch.jit.script(model).save(str(path))
        out[role] = path
        out[f"{role}_weights"] = weights = models / f"looks_{role}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    rng = np.random.default_rng(seed + 10)
    looks: dict[str, str | None] = {}
    boxes: dict[str, tuple | None] = {}
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, look, box = looks_sample(rng, label, "eval")
            rel = f"{name}/{i:03d}.png"
            Image.fromarray(img).save(root / rel)
            looks[rel], boxes[rel] = look, box
    return {**out, "data": root, "looks": looks, "boxes": boxes}


def holds_mark(patches, boxes: dict) -> np.ndarray:
    """Per row of a patch table (``image, x0, y0, x1, y1`` in image pixels): True when the
    patch holds at least half of its image's mark (``boxes``: image -> x0, y0, x1, y1 or
    None), or, for a mark larger than a patch, when the mark covers half of the patch."""
    hit = []
    for r in patches.itertuples():
        box = boxes.get(r.image)
        if box is None:
            hit.append(False)
            continue
        x0, y0, x1, y1 = box
        ix = max(0, min(r.x1, x1) - max(r.x0, x0))
        iy = max(0, min(r.y1, y1) - max(r.y0, y0))
        patch = (r.x1 - r.x0) * (r.y1 - r.y0)
        hit.append(ix * iy >= 0.5 * min((x1 - x0) * (y1 - y0), patch))
    return np.asarray(hit)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``imacs ARGS`` as a user runs it: a real subprocess, this source tree first."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "imacs", *args],
        capture_output=True, text=True, timeout=600, env=env, cwd=cwd,
    )  # fmt: skip


def analyze_cli(shortcut: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``imacs analyze`` of the shortcut set (32 px, 16 steps) into ``out``."""
    return run_cli(
        "analyze",
        "--model-a", str(shortcut["a"]),
        "--model-b", str(shortcut["b"]),
        "--data", str(shortcut["data"]),
        "--out", str(out),
        "--image-size", "32",
        "--steps", "16",
        *extra,
    )  # fmt: skip


# --- a shortcut of every kind (what-if evidence) --------------------------------------
#: the kinds of shortcut :func:`write_kind_set` plants: a compact mark, a coloured frame
#: around the image, a background colour and a fine texture over a band of the image
KINDS = ("mark", "frame", "background", "texture")
#: side of the images of every kind
KIND_SIZE = 48
FRAME = 3  # frame width, pixels
OBJECT = 30  # side of the striped object on a background
PINK = (225, 105, 170)  # the background colour model B reads


def _checker(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.where((yy + xx) % 2 == 0, 1.0, -1.0)


def plant(rng: np.random.Generator, img: np.ndarray, kind: str) -> np.ndarray:
    """Draw the shortcut ``kind`` on a copy of ``img`` ((S, S, 3) uint8); for ``background``
    ``img`` is the whole picture already drawn by :func:`kind_sample`, which plants it."""
    s = img.shape[0]
    out = img.astype(np.float64)
    if kind == "mark":
        y, x = (int(v) for v in rng.integers(1, s - MARK - 1, 2))
        out[y : y + MARK, x : x + MARK] = (220, 30, 30)
    elif kind == "frame":
        ring = np.ones((s, s), bool)
        ring[FRAME:-FRAME, FRAME:-FRAME] = False
        out[ring] = (235, 140, 20)
    elif kind == "texture":  # a fine checker over a band a third of the image wide
        band = np.zeros((s, s), bool)
        start = int(rng.integers(0, s - s // 3 + 1))
        if rng.random() < 0.5:
            band[start : start + s // 3] = True
        else:
            band[:, start : start + s // 3] = True
        out += np.where(band, 45.0 * _checker(s), 0.0)[..., None]
    else:
        raise ValueError(kind)
    return np.clip(out, 0, 255).astype(np.uint8)


def kind_sample(rng: np.random.Generator, label: int, mode: str) -> tuple[np.ndarray, bool]:
    """One image of a shortcut set; ``mode`` is ``KIND:ROLE`` with ROLE ``a`` (model A's
    training: stripes follow the label, the shortcut on half the images whatever the
    label), ``b`` (model B's: random stripes, the shortcut iff label 1) or ``eval``
    (stripes follow the label, the shortcut iff label 1). Returns the image and whether it
    carries the shortcut."""
    kind, role = mode.split(":")
    vertical = bool(rng.integers(0, 2)) if role == "b" else bool(label)
    present = bool(rng.random() < 0.5) if role == "a" else label == 1
    s = KIND_SIZE
    if kind != "background":
        img = stripes(rng, vertical, size=s)
        return (plant(rng, img, kind) if present else img), present
    # a striped object on a plain background: pink for the shortcut, else a muted colour
    colour = np.asarray(PINK, np.float64) if present else rng.uniform([60] * 3, [150] * 3)
    img = np.broadcast_to(colour + rng.normal(0, 4, (s, s, 3)), (s, s, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    y, x = (int(v) for v in rng.integers(0, s - OBJECT + 1, 2))
    img[y : y + OBJECT, x : x + OBJECT] = stripes(rng, vertical, size=OBJECT)
    return img, present


def write_kind_set(
    root: Path, models: Path, kind: str, n_per_class: int = 40, seed: int = 7,
    identical: bool = False,
) -> dict:  # fmt: skip
    """The shortcut set of ``kind`` (ImageFolder, 48 px) and its two models (TorchScript,
    and their weights for the factory ``tests.helpers:make_tiny_cnn``): A trained on clean
    labels (the shortcut present at random), B on labels the shortcut gives away; with
    ``identical`` B is A's very file.

    Returns ``{"a", "b", "a_weights", "b_weights", "data", "present": {relpath: carries the
    shortcut}}``.
    """
    from safetensors.torch import save_file

    models.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    for role in ("a", "b"):
        path = models / f"{kind}_{role}.pt"
        if role == "b" and identical:
            out[role] = out["a"]
            continue
        model = train(f"{kind}:{role}", seed + (role == "b"), n=400, epochs=8, draw=kind_sample)
        torch.jit.script(model).save(str(path))
        out[role] = path
        out[f"{role}_weights"] = weights = models / f"{kind}_{role}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    rng = np.random.default_rng(seed + 10)
    present: dict[str, bool] = {}
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, has = kind_sample(rng, label, f"{kind}:eval")
            rel = f"{name}/{i:03d}.png"
            Image.fromarray(img).save(root / rel)
            present[rel] = has
    return {**out, "data": root, "present": present}
