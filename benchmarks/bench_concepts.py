"""Which embedding, and what concepts cost: quality on the known shifts, cost per 1k patches.

Workloads, each analysed once per ``--embedding`` choice (attribution is cached, so every
choice sees the same maps and patches):

* ``demo``: the bundled sample (320 land-cover tiles, 64 px), where model B reads a logo
  (``imacs/sample_data/marks.csv`` says where each logo is);
* ``looks``: the test set of ``tests/helpers.write_looks_set`` (120 images, 32 px), where
  B's shortcut comes in three looks and A's is a blue cross.

Quality: the share of the shortcut's patches (holding >= half of a mark, or half covered by
a mark larger than a patch) in the first
concept (recall), the share of the first concept's patches that hold the mark (purity),
the number of clusters the shortcut's patches fall in (>= 5 patches), and the rank of the
concept holding most of them. Cost: the run's ``responses`` (both models on each patch
alone, plus the encoder), ``embedding``, ``clustering`` and ``concepts`` stage times, per
1,000 patches. The encoder is a random-weight 4-layer CNN (TorchScript) at 112 px: a
stand-in for the cost path (crops, resize, batches), not for the quality of a real one.

Usage: python benchmarks/bench_concepts.py [--workloads demo looks] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import imacs  # noqa: E402
from imacs.demo import DEMO_SETTINGS, SAMPLE_DIR, sample_files  # noqa: E402
from tests import helpers  # noqa: E402

STAGES = ("responses", "embedding", "clustering", "concepts")


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers, c = [], 3
        for width in (32, 64, 96, 128):
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU()]
            c = width
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def quality(run: imacs.Run, on: np.ndarray) -> dict[str, object]:
    p = run.patch_rows()
    top = run.concepts.iloc[0]
    first = (p["concept"] == top["concept"]).to_numpy()
    home = p.loc[on, "concept"].value_counts().index[0]
    clusters = p.loc[on, "cluster"].value_counts()
    return {
        "mark_patches": int(on.sum()),
        "first_concept_recall": round(float(first[on].mean()), 3),
        "first_concept_purity": round(float(on[first].mean()), 3),
        "rank_of_mark_concept": int(run.concepts.set_index("concept").loc[home, "rank"]),
        "mark_clusters": int((clusters >= 5).sum()),
        "first_concept_clusters": int(top["n_clusters"]),
        "n_clusters": len(run.clusters),
        "n_concepts": len(run.concepts),
    }


def workloads(names: list[str], tmp: Path) -> dict[str, dict]:
    out = {}
    if "demo" in names:
        f = sample_files()
        marks = pd.read_csv(SAMPLE_DIR / "marks.csv").set_index("path")
        out["demo"] = {
            "args": (f["model_a"], f["model_b"], SAMPLE_DIR),
            "kw": {**DEMO_SETTINGS, "labels_csv": f["labels_csv"], "classes": f["classes"]},
            "boxes": {k: tuple(int(v) for v in r) for k, r in marks.iterrows()},
        }
    if "looks" in names:
        s = helpers.write_looks_set(tmp / "looks", tmp / "looks-models")
        out["looks"] = {
            "args": (s["a"], s["b"], s["data"]),
            "kw": {"image_size": 32, "steps": 24},
            "boxes": {k: v for k, v in s["boxes"].items() if v and s["looks"][k] != "blue cross"},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=["demo", "looks"])
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        enc = tmp / "encoder.pt"
        torch.jit.script(Encoder()).save(str(enc))
        for name, w in workloads(args.workloads, tmp).items():
            for i, emb in enumerate(("handcrafted", "models", f"encoder:{enc}")):
                run = imacs.analyze(
                    *w["args"], tmp / "runs" / name / emb.split(":")[0], **w["kw"],
                    embedding=emb, encoder_size=112 if emb.startswith("encoder") else None,
                    cache_dir=tmp / "cache", progress=False, overwrite=True,
                )  # fmt: skip
                n = len(run.patches)
                t = run.manifest["timings"]
                row = {
                    "workload": name,
                    "embedding": emb.split(":")[0],
                    "patches": n,
                    **quality(run, helpers.holds_mark(run.patch_rows(), w["boxes"])),
                    **{f"{s}_s_per_1k": round(1000 * t.get(s, 0.0) / n, 3) for s in STAGES},
                    # the first choice computes the attribution, the others read the cache
                    "attribution_s_per_1k": round(1000 * t["attribution"] / n, 3)
                    if i == 0
                    else None,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    meta = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
