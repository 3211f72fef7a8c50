"""Which ``--removal`` fill removes content without adding any (BENCHMARKS.md, "Which fill
removes content without adding any").

Sets: the bundled demo (land cover, 64 px, model B reads a logo) and the test suite's
shortcut sets (``tests/helpers.py``: model B reads a compact mark, a coloured frame around
the image, a background colour or a fine texture; model A the stripes; 48 px, 80 images;
trained here, seeded, kept in ``--work``).

Part 1, disturbance: for every image of a set, ``k`` random patch-size tiles of the what-if
grid (k = 1 and 3, three draws each) are removed and filled by each fill; reported is the
share of images whose prediction changes, per model. A fill that adds nothing flips
neither model.

Part 2, the what-if test itself: ``imacs.analyze`` of each set with each fill (attribution
cached), and for the concept model B relies on most (the planted shortcut; the logo on the
demo): how often removing it flips B and A, and how often random regions of the same area
do.

Usage: python benchmarks/bench_removal.py [--work DIR] [--sets demo,mark,...] [--fills ...]
       [--no-whatif] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imacs
from imacs.demo import DEMO_SETTINGS, SAMPLE_DIR, sample_files
from imacs.imaging import load_rgb
from imacs.removal import FILLS, fill, ig_baseline
from imacs.whatif import tile_boxes
from tests import helpers


def load_set(name: str, work: Path) -> dict:
    """Models, images (n, 3, S, S) in [0, 1], and analyze() arguments of one set."""
    if name == "demo":
        files = sample_files()
        paths = [SAMPLE_DIR / p for p in _csv_paths(files["labels_csv"])]
        size = int(DEMO_SETTINGS["image_size"])  # type: ignore[call-overload]
        args = {
            "model_a": files["model_a"], "model_b": files["model_b"], "data": SAMPLE_DIR,
            "labels_csv": files["labels_csv"], "classes": files["classes"], **DEMO_SETTINGS,
        }  # fmt: skip
    else:
        root = work / name
        if not (root / "models" / f"{name}_b.pt").is_file():
            helpers.write_kind_set(root / "data", root / "models", name)
        paths = sorted((root / "data").rglob("*.png"))
        size = helpers.KIND_SIZE
        args = {
            "model_a": root / "models" / f"{name}_a.pt",
            "model_b": root / "models" / f"{name}_b.pt",
            "data": root / "data", "image_size": size, "steps": 24,
        }  # fmt: skip
    x = np.stack(
        [np.asarray(load_rgb(p).resize((size, size)), np.float32).transpose(2, 0, 1) / 255.0
         for p in paths]
    )  # fmt: skip
    models = {r: torch.jit.load(str(args[f"model_{r}"])).eval() for r in "ab"}
    return {"x": x, "models": models, "args": args, "size": size}


def _csv_paths(labels_csv: Path) -> list[str]:
    import pandas as pd

    return list(pd.read_csv(labels_csv)["path"])


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [model(torch.from_numpy(x[s : s + 128])).argmax(1).numpy()
             for s in range(0, len(x), 128)]
        )  # fmt: skip


def disturbance(s: dict, fills: list[str], draws: int = 3) -> dict:
    """Per fill and tile count: share of images each model changes its mind on."""
    x, size = s["x"], s["size"]
    side = max(2, size // 4)
    tiles = tile_boxes((size, size), side)
    before = {r: predict(m, x) for r, m in s["models"].items()}
    out: dict = {}
    for k in (1, 3):
        masks = []
        for d in range(draws):
            rng = np.random.default_rng([k, d])
            m = np.zeros((len(x), size, size), bool)
            for i in range(len(x)):
                for t in rng.choice(len(tiles), size=k, replace=False):
                    x0, y0, x1, y1 = tiles[t]
                    m[i, y0:y1, x0:x1] = True
            masks.append(m)
        for kind in fills:
            flips = {r: [] for r in "ab"}
            t0 = time.perf_counter()
            for d, m in enumerate(masks):
                base = ig_baseline(x, "black") if kind == "baseline" else None
                filled = fill(x, m, kind, base=base, seeds=[[d, i] for i in range(len(x))])
                for r, model in s["models"].items():
                    flips[r].append(float((predict(model, filled) != before[r]).mean()))
            out.setdefault(kind, {})[f"{k}_tiles"] = {
                **{f"flip_{r}": round(float(np.mean(v)), 4) for r, v in flips.items()},
                "fill_ms_per_image": round((time.perf_counter() - t0) / draws / len(x) * 1e3, 2),
            }
    return out


def whatif(s: dict, fills: list[str], work: Path, name: str) -> dict:
    """Per fill: the what-if numbers of the concept B relies on most."""
    out = {}
    a = s["args"]
    rest = {k: v for k, v in a.items() if k not in ("model_a", "model_b", "data")}
    for kind in fills:
        run = imacs.analyze(
            a["model_a"], a["model_b"], a["data"], work / "runs" / f"{name}-{kind}",
            removal=kind, projection="pca", progress=False, cache_dir=work / "cache",
            overwrite=True, trust_sample=0, **rest,
        )  # fmt: skip
        top = run.concepts.sort_values("diff", ascending=False).iloc[0]
        out[kind] = {
            k: (round(float(top[k]), 4) if isinstance(top[k], float | np.floating) else top[k])
            for k in ("concept", "n_images", "diff", "whatif_area", "whatif_flip_b",
                      "whatif_flip_a", "whatif_control_flip_b", "whatif_control_flip_a",
                      "whatif_effect")
        }  # fmt: skip
        out[kind]["concept"] = int(top["concept"])
        out[kind]["n_images"] = int(top["n_images"])
        out[kind]["whatif_s"] = round(run.manifest["timings"]["whatif"], 2)
        out[kind]["attribution_s"] = round(run.manifest["timings"]["attribution"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(".bench-removal"))
    ap.add_argument("--sets", default="demo," + ",".join(helpers.KINDS))
    ap.add_argument("--fills", default=",".join(FILLS))
    ap.add_argument("--no-whatif", action="store_true", help="part 1 only")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    fills = args.fills.split(",")
    result: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "sets": {},
    }
    for name in args.sets.split(","):
        s = load_set(name, args.work)
        entry = {"images": len(s["x"]), "disturbance": disturbance(s, fills)}
        if not args.no_whatif:
            entry["whatif"] = whatif(s, fills, args.work, name)
        result["sets"][name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
