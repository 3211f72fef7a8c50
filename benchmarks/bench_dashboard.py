"""Dashboard callback latency on a large run (100k patches by default).

Each main interaction is replayed as the browser sends it: a POST to Dash's
``/_dash-update-component`` with the callback's inputs (payloads built from the app's own
callback map), through Flask's test client, so the figure is server time plus JSON
encoding, without network. Reports median and p95 over N repeats; the first call of each
kind (cold caches) is reported separately.

Usage: python benchmarks/bench_dashboard.py [--patches 100000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_large_run import make_run

from imacs_app.main import create_app


def _payload(
    app, output_ids: list[str], inputs: dict[str, object], state: dict[str, object] | None = None
) -> dict:
    """Build the JSON Dash's renderer posts for the callback producing ``output_ids``."""
    for key, spec in app.callback_map.items():
        names = key.strip(".").split("...") if key.startswith("..") else [key]
        spec_inputs = {f"{i['id']}.{i['property']}" for i in spec["inputs"]}
        if [n.split("@")[0] for n in names] == output_ids and set(inputs) <= spec_inputs:
            break
    else:
        raise KeyError(output_ids)

    def entry(s: dict, values: dict) -> dict:
        name = f"{s['id']}.{s['property']}"
        return {"id": s["id"], "property": s["property"], "value": values.get(name)}

    outputs = [{"id": n.rsplit(".", 1)[0], "property": n.rsplit(".", 1)[1]} for n in names]
    return {
        "output": key,
        "outputs": outputs if len(outputs) > 1 else outputs[0],
        "inputs": [entry(s, inputs) for s in spec["inputs"]],
        "changedPropIds": list(inputs),
        "state": [entry(s, state or {}) for s in spec["state"]],
    }


def _p95(sorted_ms: list[float]) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(0.95 * (len(sorted_ms) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = make_run(Path(tmp) / "big", n_patches=args.patches)
        print(f"made a {args.patches}-patch run in {time.perf_counter() - t0:.1f}s", flush=True)
        app = create_app(run)
        client = app.server.test_client()
        rid = "big"
        base = f"?run={rid}"
        cases = {
            "open page: URL -> controls": (
                [
                    "url.search",
                    "run-picker.options",
                    "run-picker.value",
                    "f-class.options",
                    "f-class.value",
                    "f-outcome.value",
                    "f-meta.options",
                    "f-meta.value",
                    "map-color.value",
                    "notice.children",
                ],
                {"url.search": base},
                None,
            ),
            "ranking + strips (no filter)": (
                [
                    "summary.children",
                    "dl-clusters.href",
                    "dl-patches.href",
                    "ranking.figure",
                    "strips.children",
                ],
                {"key-data.data": base},
                None,
            ),
            "ranking + strips (class + meta filter)": (
                [
                    "summary.children",
                    "dl-clusters.href",
                    "dl-patches.href",
                    "ranking.figure",
                    "strips.children",
                ],
                {"key-data.data": base + "&class=class_3&meta=site%3Dnorth"},
                None,
            ),
            "patch map, 100k points (by cluster)": (["map.figure"], {"key-map.data": base}, None),
            "patch map (by B-A, filtered)": (
                ["map.figure"],
                {"key-map.data": base + "&color=diff&outcome=only_b"},
                None,
            ),
            "click a cluster: detail": (
                ["cluster-detail.children"],
                {"key-cluster.data": base + "&cluster=5"},
                None,
            ),
            "click a cluster: map highlight": (
                ["map.figure"],
                {"key-cluster.data": base + "&cluster=5", "map.figure": None},
                None,
            ),
            "click a cluster under a filter: detail": (
                ["cluster-detail.children"],
                {"key-cluster.data": base + "&cluster=5&class=class_3&meta=site%3Dnorth"},
                None,
            ),
            "click a patch: image detail": (
                ["image-detail.children"],
                {"key-image.data": base + "&cluster=5&image=123"},
                None,
            ),
        }
        for name, (outs, inputs, state) in cases.items():
            payload = _payload(app, outs, inputs, state)
            times = []
            size = 0
            for _ in range(args.repeats + 1):
                t = time.perf_counter()
                r = client.post("/_dash-update-component", json=payload)
                dt = (time.perf_counter() - t) * 1000
                if r.status_code != 200:
                    raise SystemExit(f"{name}: HTTP {r.status_code}: {r.data[:300]!r}")
                size = len(r.data)
                times.append(dt)
            cold, warm = times[0], sorted(times[1:])
            p95 = _p95(warm)
            print(
                f"{name:45s} cold {cold:7.0f} ms  median {statistics.median(warm):7.0f} ms  "
                f"p95 {p95:7.0f} ms  {size / 1e6:5.2f} MB",
                flush=True,
            )
        # the image renderings the image detail loads
        times = []
        for i in range(args.repeats):
            t = time.perf_counter()
            assert client.get(f"/render/{rid}/{i}/diff.png").status_code == 200
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        label = "render B-A overlay PNG"
        print(f"{label:45s} median {statistics.median(times):7.0f} ms  p95 {_p95(times):7.0f} ms")
        print(f"machine: {platform.machine()}, python {platform.python_version()}")


if __name__ == "__main__":
    main()
