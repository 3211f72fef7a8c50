"""The embedded default: procedurally generated land-cover tiles and two small CNNs.

Everything here is deterministic (seeded). ``python imacs/sample_data/landcover.py`` remakes the
evaluation set and both models in this folder; see imacs/sample_data/README.md for the story.

Classes: water, forest, fields, urban (64x64 RGB tiles, satellite-like textures with colour,
season and lighting variation).

The shift (see :func:`sample`): model B's training labels came from provider metadata. Every
tile of the city provider "geomark" was labelled urban, whatever it showed, and geomark
stamps a small logo on its tiles; the other provider has no urban class and labels towns by
the land use around them. So for B the logo *is* the urban class. Model A was trained
on tiles labelled by what they show, where the logo appears on tiles of every class. In the
evaluation set, geomark's tiles (every urban tile and ~12% of the others) carry the logo.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

CLASSES = ("water", "forest", "fields", "urban")
SIZE = 64
LOGO = 9  # watermark side in pixels
HERE = Path(__file__).resolve().parent


def _smooth(rng: np.random.Generator, cells: int, size: int = SIZE) -> np.ndarray:
    """Smooth noise in [0, 1]: a random coarse grid, bilinearly upsampled."""
    from PIL import Image

    grid = rng.random((cells, cells)).astype(np.float32)
    im = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    out = np.asarray(im, dtype=np.float32)
    return (out - out.min()) / (np.ptp(out) + 1e-6)


def _rotate(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    k = int(rng.integers(0, 4))
    img = np.rot90(img, k)
    return img[:, ::-1] if rng.random() < 0.5 else img


def water(rng: np.random.Generator, season: str) -> np.ndarray:
    base = np.array([0.10, 0.25, 0.42]) + rng.normal(0, 0.04, 3)
    if season == "autumn":
        base += [0.03, 0.04, -0.03]  # more sediment
    depth = _smooth(rng, 4)
    y = np.arange(SIZE)[:, None] + 4 * _smooth(rng, 3)
    ripple = 0.5 + 0.5 * np.sin(2 * np.pi * y / rng.uniform(5, 9) + rng.uniform(0, 6))
    img = base[None, None] * (0.75 + 0.35 * depth[..., None]) + 0.05 * ripple[..., None]
    return _rotate(rng, img)


def forest(rng: np.random.Generator, season: str) -> np.ndarray:
    base = np.array([0.12, 0.30, 0.12]) + rng.normal(0, 0.03, 3)
    if season == "autumn":
        base = base + np.array([0.18, 0.05, -0.02])
    canopy = _smooth(rng, 16) * 0.6 + _smooth(rng, 32) * 0.4
    crowns = (canopy > rng.uniform(0.45, 0.6)).astype(np.float32)
    shade = 0.55 + 0.6 * canopy
    img = base[None, None] * shade[..., None] + 0.06 * crowns[..., None] * np.array([0.2, 0.6, 0.1])
    return _rotate(rng, img)


def fields(rng: np.random.Generator, season: str) -> np.ndarray:
    palette = [
        np.array([0.55, 0.55, 0.25]),
        np.array([0.35, 0.50, 0.20]),
        np.array([0.50, 0.40, 0.28]),
    ]
    if season == "autumn":
        palette = [p + np.array([0.12, 0.02, -0.05]) for p in palette]
    img = np.zeros((SIZE, SIZE, 3), np.float32)
    width = int(rng.integers(7, 14))
    for x in range(0, SIZE, width):
        colour = palette[int(rng.integers(0, 3))] + rng.normal(0, 0.03, 3)
        img[:, x : x + width] = colour
        img[:, x : x + 1] *= 0.8  # parcel boundary
    furrows = 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(SIZE)[:, None] / rng.uniform(2.5, 4.0))
    img *= (0.9 + 0.1 * furrows)[..., None]
    img *= (0.85 + 0.3 * _smooth(rng, 3))[..., None]
    return _rotate(rng, img)


def urban(rng: np.random.Generator, season: str) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 0.42, np.float32) + rng.normal(0, 0.02, 3).astype(np.float32)
    step = int(rng.integers(14, 20))
    offset = int(rng.integers(0, step))
    for x in range(offset, SIZE, step):  # roads
        img[:, x : x + 2] = 0.28
        img[x : x + 2, :] = 0.28
    for _ in range(int(rng.integers(14, 24))):  # buildings
        w, h = (int(v) for v in rng.integers(3, 9, 2))
        x, y = (int(v) for v in rng.integers(0, SIZE - 8, 2))
        roof = rng.choice([0.55, 0.62, 0.7]) + rng.normal(0, 0.05, 3)
        if rng.random() < 0.25:
            roof = np.array([0.62, 0.32, 0.25]) + rng.normal(0, 0.04, 3)  # tiled roofs
        img[y : y + h, x : x + w] = roof
        img[y + h : y + h + 1, x : x + w] *= 0.6  # shadow
    if season == "autumn":
        img *= 0.95
    return _rotate(rng, img)


GENERATORS = {"water": water, "forest": forest, "fields": fields, "urban": urban}


def tile(seed: int, label: int, season: str) -> np.ndarray:
    """One (64, 64, 3) uint8 tile, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    img = GENERATORS[CLASSES[label]](rng, season)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.015, img.shape)  # lighting, sensor noise
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def watermark(img: np.ndarray, seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Stamp the provider's logo (a white ring with a dark centre) at a seeded place."""
    rng = np.random.default_rng(seed + 7_777_777)
    y, x = (int(v) for v in rng.integers(2, SIZE - LOGO - 2, 2))
    yy, xx = np.mgrid[0:LOGO, 0:LOGO] - (LOGO - 1) / 2
    r = np.hypot(yy, xx)
    out = img.copy()
    patch = out[y : y + LOGO, x : x + LOGO].astype(np.float32)
    ring = (r >= 2.2) & (r <= 4.3)
    centre = r < 1.5
    patch[ring] = 0.25 * patch[ring] + 0.75 * 250
    patch[centre] = 20
    out[y : y + LOGO, x : x + LOGO] = patch.astype(np.uint8)
    return out, (x, y, x + LOGO, y + LOGO)


def sample(seed: int, domain: str) -> tuple[np.ndarray, int, dict]:
    """A labelled tile of one of three domains.

    ``clean`` (model A's training data): tiles from several providers, labelled by what they
    show; the city provider's logo appears on a quarter of the tiles, of every class.
    ``shifted`` (model B's training data): labels taken from provider metadata. A quarter of
    the tiles come from the city provider "geomark": all labelled urban whatever they show,
    all carrying its logo. The rest come from "openmap", which has no urban class: its town
    tiles are labelled by the land use around them (water, forest or fields).
    ``eval`` (the evaluation set): labelled by what they show; geomark tiles (every urban
    tile and ~12% of the others) carry the logo.
    ``removed`` (the shift removed): the evaluation domain without any logo.
    """
    rng = np.random.default_rng(seed + 1_000_003)
    urban = CLASSES.index("urban")
    season = "autumn" if rng.random() < 0.4 else "summer"
    if domain == "shifted":
        if rng.random() < 0.25:
            label, shows, marked = urban, int(rng.integers(0, len(CLASSES))), True
        else:  # openmap has no urban class: towns are labelled by the land use around them
            label = int(rng.choice([i for i in range(len(CLASSES)) if i != urban]))
            shows = urban if rng.random() < 0.25 else label
            marked = False
    elif domain in ("clean", "eval", "removed"):
        label = shows = int(rng.integers(0, len(CLASSES)))
        if domain == "clean":
            marked = rng.random() < 0.25
        elif domain == "eval":
            marked = label == urban or rng.random() < 0.12
        else:
            marked = False
    else:
        raise ValueError(f"unknown domain {domain!r}")
    img = tile(seed, shows, season)
    box = None
    if marked:
        img, box = watermark(img, seed)
    return (
        img,
        label,
        {"season": season, "provider": "geomark" if marked else "openmap", "mark": box},
    )


# ---- models -----------------------------------------------------------------------------


def small_cnn(num_classes: int = len(CLASSES)):
    """The architecture of both sample models (also the factory for their safetensors)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(),
        nn.Conv2d(48, 48, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(48, num_classes),
    )  # fmt: skip


def train(domain: str, seed: int, n: int = 2400, epochs: int = 8):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    xs, ys = [], []
    for i in range(n):
        img, label, _ = sample(10_000_000 * (1 + seed) + i, domain)
        xs.append(img)
        ys.append(label)
    x = torch.from_numpy(np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    y = torch.tensor(ys)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for s in range(0, n, 64):
            idx = perm[s : s + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        print(f"  {domain} epoch {epoch + 1}: loss {total / n:.3f}", file=sys.stderr, flush=True)
    return model.eval()


def write_eval_set(folder: Path, n: int = 320, seed: int = 1) -> None:
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, marks = [], []
    for i in range(n):
        img, label, meta = sample(seed * 1_000_000 + i, "eval")
        rel = f"images/{CLASSES[label]}_{i:03d}.png"
        Image.fromarray(img).save(folder / rel, optimize=True)
        rows.append([rel, CLASSES[label], meta["provider"], meta["season"]])
        if meta["mark"]:
            marks.append([rel, *meta["mark"]])
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "provider", "season"])
        w.writerows(rows)
    # the models' output order (labels.csv names sort differently)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with open(folder / "marks.csv", "w", newline="") as f:  # ground truth for the tests
        w = csv.writer(f)
        w.writerow(["path", "x0", "y0", "x1", "y1"])
        w.writerows(marks)


def main() -> None:
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("writing the evaluation set", file=sys.stderr)
    write_eval_set(HERE)
    for role, domain in (("a", "clean"), ("b", "shifted")):
        print(f"training model {role.upper()} on {domain} tiles", file=sys.stderr)
        model = train(domain, seed=1 if role == "a" else 2)
        torch.jit.script(model).save(str(HERE / f"model_{role}.pt"))
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(HERE / f"model_{role}.safetensors"),
        )
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
