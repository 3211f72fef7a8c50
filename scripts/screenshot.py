"""Make docs/dashboard.png: the real dashboard on the demo run, in headless Chromium.

Usage: python scripts/screenshot.py   (computes the demo run first if needed)
"""

from __future__ import annotations

import threading
from pathlib import Path

from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from imacs.demo import demo_run
from imacs_app.main import create_app

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip
OUT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    run = demo_run(progress=False)
    images = run.images
    wrong_b = images[images["correct_a"] & ~images["correct_b"]]
    image = int(wrong_b["image_id"].iloc[0]) if len(wrong_b) else 0
    concept = int(run.concepts.iloc[0]["concept"])
    srv = make_server("127.0.0.1", 0, create_app(run.path).server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/?run={run.path.name}&concept={concept}&image={image}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1400}, device_scale_factor=1)
        page.goto(url)
        page.wait_for_selector(".panels img")
        page.wait_for_function(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        page.wait_for_timeout(1000)
        OUT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(OUT), full_page=True)
        browser.close()
    srv.shutdown()
    print(OUT)


if __name__ == "__main__":
    main()
