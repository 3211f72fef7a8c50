"""The server under concurrent clients: gunicorn (the container's entry point) on loopback.

Starts ``scripts/docker-entrypoint.sh serve`` on the demo run with W workers, then C client
threads each send a bounded number of requests (and stop after a time limit), cycling
through what a browser does on the dashboard: the page, Dash callbacks (ranking, cluster
detail, image detail), thumbnails, renderings, a CSV download and /healthz. Reports
throughput, latency percentiles per kind and errors. Traffic goes to 127.0.0.1 only.

Usage: python benchmarks/bench_load.py [--clients 20] [--requests 60] [--seconds 120] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_dashboard import _payload  # noqa: E402

from imacs.demo import demo_run  # noqa: E402
from imacs_app.main import create_app  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=60, help="per client")
    ap.add_argument("--seconds", type=float, default=120, help="hard stop")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    run = demo_run(progress=False)
    rid = run.path.name
    app = create_app(run.path)  # only to build callback payloads like the browser's
    base_q = f"?run={rid}"
    cluster = int(run.clusters.iloc[0]["cluster"])
    image = int(run.patches[run.patches["cluster"] == cluster]["image_id"].iloc[0])
    callbacks = {
        "callback: ranking": _payload(
            app,
            [
                "summary.children",
                "dl-clusters.href",
                "dl-patches.href",
                "ranking.figure",
                "strips.children",
            ],
            {"key-data.data": base_q},
        ),
        "callback: cluster detail": _payload(
            app, ["cluster-detail.children"], {"key-cluster.data": f"{base_q}&cluster={cluster}"}
        ),
        "callback: image detail": _payload(
            app, ["image-detail.children"], {"key-image.data": f"{base_q}&image={image}"}
        ),
    }

    port = _port()
    env = {
        **os.environ,
        "IMACS_RUNS": str(run.path),
        "IMACS_WORKERS": str(args.workers),
        "IMACS_BIND": f"127.0.0.1:{port}",
        "PYTHONPATH": str(ROOT),
    }
    server = subprocess.Popen(
        [str(ROOT / "scripts" / "docker-entrypoint.sh"), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        kinds = [
            ("page", lambda: urllib.request.Request(base + "/")),
            ("healthz", lambda: urllib.request.Request(base + "/healthz")),
            (
                "thumbnail",
                lambda: urllib.request.Request(f"{base}/files/{rid}/thumbs/patches/{image}.jpg"),
            ),
            (
                "render overlay",
                lambda: urllib.request.Request(f"{base}/render/{rid}/{image}/diff.png"),
            ),
            (
                "download clusters.csv",
                lambda: urllib.request.Request(f"{base}/download/{rid}/clusters.csv"),
            ),
        ] + [
            (
                name,
                lambda p=p: urllib.request.Request(
                    base + "/_dash-update-component",
                    data=json.dumps(p).encode(),
                    headers={"Content-Type": "application/json"},
                ),
            )
            for name, p in callbacks.items()
        ]
        results: dict[str, list[float]] = {k: [] for k, _ in kinds}
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            for i in range(args.requests):
                if time.monotonic() > stop_at:
                    return
                name, make = kinds[(seed + i) % len(kinds)]
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(make(), timeout=30) as r:
                        r.read()
                        ok = r.status == 200
                except OSError as exc:
                    ok = False
                    with lock:
                        errors.append(f"{name}: {exc}")
                dt = (time.perf_counter() - t) * 1000
                if ok:
                    with lock:
                        results[name].append(dt)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    total = sum(len(v) for v in results.values())
    print(
        f"{args.clients} clients x {args.requests} requests, {args.workers} gunicorn workers: "
        f"{total} ok, {len(errors)} errors in {wall:.1f}s = {total / wall:.1f} req/s"
    )
    print("| request | n | median (ms) | p95 (ms) | max (ms) |")
    print("|---|---|---|---|---|")
    for name, ms in results.items():
        if ms:
            ms.sort()
            p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
            print(
                f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {p95:.0f} | {ms[-1]:.0f} |"
            )
    for e in errors[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
