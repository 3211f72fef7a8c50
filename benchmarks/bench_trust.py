"""Cost of the trust and agreement stages relative to the attribution stage.

Workload: the synthetic set of bench_attribution.py (N random PNG images, 160x160 resized to
the model input, two small ResNet-style CNNs with seeded random weights), Integrated
Gradients with S steps. One ``imacs.analyze`` with the cache off and the default
``--trust-sample 64`` gives the stage timings from run.json; the trust stage's parts
(deletion/insertion curves, infidelity, sensitivity_max) are timed by wrapping them.

With ``--demo`` the workload is the bundled demo instead (320 tiles of 64 px, its two
models, the demo's settings), analysed with the cache off and ``--removal`` (default: the
run's default fill).

With ``--crosscheck`` nothing is timed: on the demo's maps (a seeded sample of 64 images),
imacs's deletion curves with the black fill are compared with Quantus's ``PixelFlipping``
and imacs's ROAD imputation with Quantus's ``noisy_linear_imputation`` (noise off), when
Quantus is importable (it is not an imacs dependency: install it into a throwaway
environment); otherwise with a plain loop and an exact sparse solve written here.

Usage: python benchmarks/bench_trust.py [--images 256] [--size 64] [--steps 32]
       [--trust-sample 64] [--demo] [--removal FILL] [--crosscheck] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_attribution import make_workload

import imacs
from imacs import trust
from imacs.settings import REMOVAL_DEFAULT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--trust-sample", type=int, default=64)
    ap.add_argument("--demo", action="store_true", help="time the demo instead")
    ap.add_argument("--removal", default=REMOVAL_DEFAULT, help="the fill (default: %(default)s)")
    ap.add_argument("--crosscheck", action="store_true", help="compare with Quantus, no timing")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    if args.crosscheck:
        result = crosscheck()
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return

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
        if args.demo:
            from imacs.demo import DEMO_SETTINGS, SAMPLE_DIR, sample_files

            f = sample_files()
            run = imacs.analyze(
                f["model_a"], f["model_b"], SAMPLE_DIR, root / "run",
                labels_csv=f["labels_csv"], classes=f["classes"], cache_dir=None,
                progress=False, trust_sample=args.trust_sample, removal=args.removal,
                **DEMO_SETTINGS,
            )  # fmt: skip
        else:
            data, a, b = make_workload(root, args.images)
            run = imacs.analyze(
                a, b, data, root / "run", image_size=args.size, steps=args.steps,
                projection="pca", cache_dir=None, progress=False,
                trust_sample=args.trust_sample, removal=args.removal,
            )  # fmt: skip
        t = run.manifest["timings"]
        result = {
            "workload": "demo" if args.demo else "synthetic",
            "removal": args.removal,
            "images": len(run.images),
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


def demo_sample(n: int = 64, steps: int = 32) -> dict:
    """The demo's models, a seeded sample of its images and both models' IG maps of them."""
    from imacs.attribution import PairedAttribution
    from imacs.demo import DEMO_SETTINGS, SAMPLE_DIR, sample_files
    from imacs.imaging import load_rgb
    from imacs.settings import AnalysisSettings

    files = sample_files()
    paths = list(pd.read_csv(files["labels_csv"])["path"])
    idx = trust.pick_sample(len(paths), n, 0)
    size = int(DEMO_SETTINGS["image_size"])  # type: ignore[call-overload]
    x = np.stack(
        [np.asarray(load_rgb(SAMPLE_DIR / paths[i]).resize((size, size)), np.float32)
         .transpose(2, 0, 1) / 255.0 for i in idx]
    )  # fmt: skip
    models = {r: torch.jit.load(str(files[f"model_{r}"])).eval() for r in "ab"}
    s = AnalysisSettings.from_keywords(image_size=size, steps=steps, device="cpu")
    engine = PairedAttribution(models, s.preprocess, s.attribution)
    res = {r: engine.attribute(r, x) for r in "ab"}
    return {
        "x": x, "engine": engine, "models": models,
        "maps": {r: res[r].maps for r in "ab"}, "pred": {r: res[r].pred for r in "ab"},
    }  # fmt: skip


def crosscheck(steps: int = 16) -> dict:
    """imacs's deletion curves (black fill) against Quantus's PixelFlipping, and its ROAD
    imputation against Quantus's ``noisy_linear_imputation``, on the demo's maps; without
    Quantus, against a plain step-by-step loop and the exact sparse solve written here."""
    from imacs.removal import ROAD_NOISE, fill

    d = demo_sample()
    x, engine = d["x"], d["engine"]
    n, _, h, w = x.shape
    out: dict = {"images": n, "steps": steps}
    try:
        import quantus

        out["reference"] = f"quantus {quantus.__version__}"
    except ImportError:
        quantus = None
        out["reference"] = "a plain loop written here (Quantus not installed)"
    for r in "ab":
        # the same order for both: the maps' ranks, ties broken by pixel index (the IG maps
        # of max-pooling CNNs hold many exact zeros, which each tool would order its own way)
        flat = d["maps"][r].reshape(n, -1)
        ranks = np.argsort(np.lexsort((-np.arange(h * w)[None].repeat(n, 0), flat)), axis=1)
        maps = ranks.reshape(n, h, w).astype(np.float32)
        ours = trust.curves(engine, r, x, maps, d["pred"][r], steps, 0, "baseline")
        ours_del = ours["deletion"]
        if quantus is not None:
            # Quantus steps over the map broadcast to the 3 channels, ``features_in_step``
            # channel values at a time: every 3rd of its points is one of ours
            metric = quantus.PixelFlipping(
                features_in_step=h * w // steps, normalise=False, abs=False,
                perturb_baseline=0.0, disable_warnings=True,  # "black" is the min
            )  # fmt: skip
            a = np.broadcast_to(maps[:, None], x.shape).copy()
            theirs = np.asarray(
                metric(model=d["models"][r], x_batch=x, y_batch=d["pred"][r], a_batch=a,
                       device="cpu", softmax=True, batch_size=n)
            )[:, 2::3]  # fmt: skip
        else:
            theirs = _plain_deletion(engine, r, x, maps, d["pred"][r], steps)
        out[f"pixel_flipping_{r}"] = {
            "max_abs_diff_per_point": float(np.abs(ours_del[:, 1:] - theirs).max()),
            "deletion_auc_imacs": float(trust.auc(ours_del).mean()),
            "deletion_auc_reference": float(
                trust.auc(np.concatenate([ours_del[:, :1], theirs], 1)).mean()
            ),
        }
    # ROAD's imputation, noise off, for the top 10 / 50 / 90 % of B's map
    order = np.argsort(-d["maps"]["b"].reshape(n, -1), axis=1)
    diffs = {}
    for p in (10, 50, 90):
        k = h * w * p // 100
        masks = np.zeros((n, h * w), bool)
        np.put_along_axis(masks, order[:, :k], True, axis=1)
        masks = masks.reshape(n, h, w)
        import imacs.removal as removal

        removal.ROAD_NOISE, keep = 0.0, ROAD_NOISE
        try:
            ours_fill = fill(x, masks, "road")
        finally:
            removal.ROAD_NOISE = keep
        if quantus is not None:
            from quantus.functions.perturb_func import noisy_linear_imputation

            theirs_fill = np.stack(
                [noisy_linear_imputation(x[i], order[i, :k], noise=0.0) for i in range(n)]
            )
        else:
            theirs_fill = _plain_road(x, masks)
        diffs[f"top_{p}%"] = float(np.abs(ours_fill - theirs_fill).max())
    out["road_imputation_max_abs_diff"] = diffs
    return out


def _plain_deletion(engine, role, x, maps, target, steps):  # type: ignore[no-untyped-def]
    """(n, steps) the deletion curve after each step, one image and one step at a time."""
    n, _, h, w = x.shape
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    out = np.zeros((n, steps))
    for i in range(n):
        for k in range(1, steps + 1):
            xi = x[i].reshape(3, -1).copy()
            xi[:, order[i, : h * w * k // steps]] = 0.0
            p = engine.probabilities_array(role, xi.reshape(1, 3, h, w))
            out[i, k - 1] = p[0, target[i]]
    return out


def _plain_road(x, masks):  # type: ignore[no-untyped-def]
    """ROAD's system, one sparse solve per image and channel, written out plainly."""
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    out = x.copy()
    n, c, h, w = x.shape
    for i in range(n):
        ys, xs = np.nonzero(masks[i])
        where = {(y, xx): j for j, (y, xx) in enumerate(zip(ys, xs, strict=True))}
        a = lil_matrix((len(ys), len(ys)))
        b = np.zeros((len(ys), c))
        for j, (y, xx) in enumerate(zip(ys, xs, strict=True)):
            for dy, dx, wt in (
                (-1, 0, 1 / 6),
                (1, 0, 1 / 6),
                (0, -1, 1 / 6),
                (0, 1, 1 / 6),
                (-1, -1, 1 / 12),
                (-1, 1, 1 / 12),
                (1, -1, 1 / 12),
                (1, 1, 1 / 12),
            ):
                ny, nx = y + dy, xx + dx
                if 0 <= ny < h and 0 <= nx < w:
                    a[j, j] += wt
                    if (ny, nx) in where:
                        a[j, where[ny, nx]] -= wt
                    else:
                        b[j] += wt * x[i, :, ny, nx]
        sol = spsolve(a.tocsc(), b)
        out[i][:, ys, xs] = np.asarray(sol).reshape(len(ys), c).T
    return out


if __name__ == "__main__":
    main()
