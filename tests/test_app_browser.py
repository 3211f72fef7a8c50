"""The dashboard in a real browser (headless Chromium, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import pytest
from werkzeug.serving import make_server

from app.main import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip

if not os.path.exists(CHROMIUM):
    if os.environ.get("IMACS_REQUIRE_BROWSER"):
        pytest.fail("chromium is not installed but IMACS_REQUIRE_BROWSER is set", pytrace=False)
    pytest.skip("chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(shortcut_run) -> Iterator[str]:
    app = create_app(shortcut_run.path.parent)
    srv = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    # Playwright's polling waits evaluate strings, which the app's CSP forbids (no eval):
    # these pages bypass the CSP; test_brw008 checks the app under its CSP.
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    yield page
    page.close()


def _query(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def test_brw001_click_cluster_then_patch(page, server, shortcut_run) -> None:
    run_id = shortcut_run.path.name
    page.goto(server + "/")
    page.wait_for_selector(".strip")
    assert page.locator(".summary").inner_text().count("100.0%") == 3  # both accuracies, agreement
    assert _query(page)["run"] == [run_id]
    top = shortcut_run.clusters.iloc[0]
    assert page.locator(".strip").first.inner_text().startswith(f"#1 cluster {int(top['cluster'])}")

    page.locator(".strip").first.click()
    page.wait_for_selector(".gallery .patch")
    detail = page.locator("#cluster-detail")
    assert f"Cluster {int(top['cluster'])} · rank 1" in detail.inner_text()
    assert (
        f"{int(top['n_patches'])} patches in {int(top['n_images'])} images" in detail.inner_text()
    )
    assert _query(page)["cluster"] == [str(int(top["cluster"]))]

    first = page.locator(".gallery .patch").first
    first.click()
    page.wait_for_selector(".panels img")
    image_id = int(_query(page)["image"][0])
    row = shortcut_run.images.set_index("image_id").loc[image_id]
    text = page.locator("#image-detail").inner_text()
    assert f"Image {image_id}: {row['image']}" in text
    assert "model_a predicts vertical" in text and "model_b predicts vertical" in text
    # all four renderings loaded as image files (not inline data)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.panels img'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    srcs = page.eval_on_selector_all(".panels img", "els => els.map(e => e.getAttribute('src'))")
    assert [s.split("/")[-1] for s in srcs] == ["image.png", "a.png", "b.png", "diff.png"]
    assert all(s.startswith("/render/") for s in srcs)
    assert page.console_errors == []


def test_brw002_shared_url_opens_the_same_view(page, server, shortcut_run) -> None:
    run_id = shortcut_run.path.name
    p = shortcut_run.patches
    cluster = int(shortcut_run.clusters.iloc[1]["cluster"])
    image = int(p[p["cluster"] == cluster]["image_id"].iloc[0])
    label = shortcut_run.images.set_index("image_id").loc[image, "label_name"]
    url = f"{server}/?run={run_id}&cluster={cluster}&image={image}&class={label}&color=diff"
    page.goto(url)
    page.wait_for_selector(".panels img")
    assert f"Cluster {cluster} ·" in page.locator("#cluster-detail").inner_text()
    assert f"Image {image}:" in page.locator("#image-detail").inner_text()
    assert (
        label in page.locator("#f-class").inner_text()
    )  # the filter control shows the URL's filter
    assert page.locator("#map-color input[value=diff]").is_checked()
    n = int((shortcut_run.images["label_name"] == label).sum())
    assert f"{n} / {len(shortcut_run.images)}" in page.locator(".summary").inner_text()
    page.wait_for_timeout(500)  # nothing rewrites the state after load
    q = _query(page)
    assert q["cluster"] == [str(cluster)] and q["image"] == [str(image)] and q["class"] == [label]
    assert page.console_errors == []


def test_brw003_filter_and_close_update_the_url(page, server, shortcut_run) -> None:
    run_id = shortcut_run.path.name
    cluster = int(shortcut_run.clusters.iloc[0]["cluster"])
    page.goto(f"{server}/?run={run_id}&cluster={cluster}")
    page.wait_for_selector(".gallery .patch")
    page.locator("#cluster-detail .close").click()
    page.wait_for_function("!location.search.includes('cluster=')")
    page.wait_for_selector("#cluster-detail >> text=Pick a cluster")
    page.locator(".strip").nth(1).click()
    page.wait_for_function("location.search.includes('cluster=')")
    assert _query(page)["cluster"] == [str(int(shortcut_run.clusters.iloc[1]["cluster"]))]
    assert page.console_errors == []


def test_brw004_a_truncated_table_shows_a_message_not_a_broken_page(
    browser, shortcut_run, tmp_path
) -> None:
    root = tmp_path / "runs"
    shutil.copytree(shortcut_run.path, root / "cut")
    data = (root / "cut" / "clusters.parquet").read_bytes()
    (root / "cut" / "clusters.parquet").write_bytes(data[: len(data) // 3])
    srv = make_server("127.0.0.1", 0, create_app(root).server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"http://127.0.0.1:{srv.server_port}/?run=cut")
        page.wait_for_selector(".error")
        text = page.locator(".error").first.inner_text()
        assert "clusters.parquet: unreadable" in text and "re-run imacs analyze" in text
        assert errors == []
    finally:
        page.close()
        srv.shutdown()


def _watch_5xx(page) -> list[str]:
    bad: list[str] = []
    page.on("response", lambda r: bad.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    return bad


def _plot_point(page, graph: str, trace: int, x: object, y: object) -> tuple[float, float]:
    """Page pixel position of data point (x, y) of a plotly graph's trace."""
    return page.evaluate(
        """([graph, trace, x, y]) => {
            const gd = document.querySelector(`#${graph} .js-plotly-plot`);
            const t = gd._fullData[trace];
            const xa = gd._fullLayout[t.xaxis.replace('x', 'xaxis')];
            const ya = gd._fullLayout[t.yaxis.replace('y', 'yaxis')];
            const box = gd.getBoundingClientRect();
            const px = xa._offset + xa.d2p(x), py = ya._offset + ya.d2p(y);
            return [box.left + px, box.top + py];
        }""",
        [graph, trace, x, y],
    )


def test_brw005_clicking_a_ranking_bar_opens_marks_and_scrolls_to_the_cluster(
    page, server, shortcut_run
) -> None:
    errors = _watch_5xx(page)
    page.goto(server + "/")
    page.wait_for_selector("#ranking .bars path")
    second = shortcut_run.clusters.iloc[1]
    label = f"#2 · c{int(second['cluster'])}"
    # the B − A bar of rank 2 (trace 2, in the right panel), clicked where a user clicks
    x, y = _plot_point(page, "ranking", 2, float(second["diff"]) / 2, label)
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.wait_for_function(f"location.search.includes('cluster={int(second['cluster'])}')")
    page.wait_for_selector(f"#cluster-detail >> text=Cluster {int(second['cluster'])} · rank 2")
    # feedback: the row is marked in the ranking, its strip too, and the detail is in view
    page.wait_for_function(
        "document.querySelector('#ranking .js-plotly-plot').layout.shapes.length === 1"
    )
    shape = page.evaluate("document.querySelector('#ranking .js-plotly-plot').layout.shapes[0]")
    assert (shape["y0"], shape["y1"]) == (0.5, 1.5)  # row index 1 = rank 2
    selected = page.locator(".strip.selected")
    assert selected.count() == 1 and selected.inner_text().startswith("#2 cluster")
    page.wait_for_function(  # scrolled: the detail's top is in the upper third of the view
        "() => { const t = document.getElementById('cluster-detail')"
        ".getBoundingClientRect().top; return t > -5 && t < innerHeight / 3; }"
    )
    assert errors == [] and page.console_errors == []


def test_brw006_clicking_a_map_point_opens_its_cluster(page, server, shortcut_run) -> None:
    errors = _watch_5xx(page)
    page.goto(server + "/")
    page.wait_for_selector("#map .js-plotly-plot")
    p = shortcut_run.patches
    # the patch farthest from the others' centre: no other point sits on top of it
    centre = p[["proj_x", "proj_y"]].mean()
    far = p.loc[((p[["proj_x", "proj_y"]] - centre) ** 2).sum(axis=1).idxmax()]
    page.locator("#map").scroll_into_view_if_needed()
    x, y = _plot_point(
        page, "map", 0, round(float(far["proj_x"]), 3), round(float(far["proj_y"]), 3)
    )
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.wait_for_function(f"location.search.includes('cluster={int(far['cluster'])}')")
    page.wait_for_selector(f"#cluster-detail >> text=Cluster {int(far['cluster'])} ·")
    assert errors == [] and page.console_errors == []


def test_brw007_run_picker_and_downloads(browser, shortcut_run, tmp_path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(shortcut_run.path, root / "older")
    shutil.copytree(shortcut_run.path, root / "newer")
    manifest = root / "newer" / "run.json"
    text = manifest.read_text().replace(
        shortcut_run.manifest["created"], "2099-01-01T00:00:00+00:00"
    )
    manifest.write_text(text)
    srv = make_server("127.0.0.1", 0, create_app(root).server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    errors = _watch_5xx(page)
    try:
        page.goto(f"http://127.0.0.1:{srv.server_port}/")
        page.wait_for_selector(".strip")
        assert _query(page)["run"] == ["newer"]  # newest first, and opened by default
        page.locator("#run-picker").click()
        options = page.locator(".dash-dropdown-option[role=option]")
        assert options.all_inner_texts()[:2] == ["newer", "older"]
        options.nth(1).click()
        page.wait_for_function("location.search.includes('run=older')")
        with page.expect_download() as dl:
            page.locator("#dl-clusters").click()
        rows = dl.value.path().read_text().strip().splitlines()
        assert rows[0].startswith("cluster,rank") and len(rows) == len(shortcut_run.clusters) + 1
        assert errors == []
    finally:
        page.close()
        srv.shutdown()


def test_brw008_the_app_works_under_its_content_security_policy(browser, server) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # CSP enforced
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        response = page.goto(server + "/")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_selector(".strip")
        page.locator(".strip").first.click()
        page.wait_for_selector(".gallery .patch")
        page.locator(".gallery .patch").first.click()
        page.wait_for_selector(".panels img")
        assert page.locator("#map .js-plotly-plot").count() == 1
        assert problems == []  # a CSP violation is reported as a console error
    finally:
        page.close()
