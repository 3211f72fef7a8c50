"""The dashboard in a real browser (headless Chromium, driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from werkzeug.serving import make_server

from imacs_app.main import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip

if not os.path.exists(CHROMIUM):
    if os.environ.get("IMACS_REQUIRE_BROWSER"):
        pytest.fail("chromium is not installed but IMACS_REQUIRE_BROWSER is set", pytrace=False)
    pytest.skip("chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def runs(shortcut_run, marked_run, looks_run, tmp_path_factory) -> Path:
    """Three runs: ``looks`` (B's shortcut in three looks, one concept), ``shortcut`` and,
    made last, ``watermark`` (with a ``mark`` meta column: the images with the red mark
    that model B reads)."""
    root = tmp_path_factory.mktemp("browser-runs")
    shutil.copytree(shortcut_run.path, root / "shortcut")
    shutil.copytree(marked_run.path, root / "watermark")
    shutil.copytree(looks_run.path, root / "looks")
    t = os.path.getmtime(root / "watermark" / "run.json")
    os.utime(root / "shortcut" / "run.json", (t - 3600, t - 3600))
    os.utime(root / "looks" / "run.json", (t - 7200, t - 7200))
    return root


@pytest.fixture(scope="module")
def server(runs) -> Iterator[str]:
    with _serving(runs) as url:
        yield url


@contextmanager
def _serving(root: Path) -> Iterator[str]:
    srv = make_server("127.0.0.1", 0, create_app(root).server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _watch(page) -> None:
    """Collect console errors and server errors (HTTP 5xx) on ``page.console_errors``."""
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.on(
        "response",
        lambda r: (
            page.console_errors.append(f"HTTP {r.status} {r.url}") if r.status >= 500 else None
        ),
    )


@pytest.fixture(scope="module")
def shared_page(browser):
    # Playwright's polling waits evaluate strings, which the app's CSP forbids (no eval):
    # these pages bypass the CSP; test_brw012 checks the app under its CSP.
    page = browser.new_page(
        viewport={"width": 1400, "height": 1000}, accept_downloads=True, bypass_csp=True
    )
    _watch(page)
    yield page
    page.close()


@pytest.fixture
def page(shared_page):
    """One browser tab for the module (fast); each test starts with no errors recorded."""
    shared_page.console_errors.clear()
    yield shared_page
    shared_page.goto("about:blank")


def _query(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def _wait_for_query(page, key: str, value: str) -> None:
    page.wait_for_function(
        "([k, v]) => new URLSearchParams(location.search).getAll(k).includes(v)", arg=[key, value]
    )


def _stat(page, label: str) -> str:
    """The value shown above a summary label ("images", "accuracy A"...)."""
    return (
        page.locator(".stat", has=page.locator(".label", has_text=label))
        .locator(".value")
        .first.inner_text()
    )


def _pick(page, dropdown: str, option: str) -> None:
    """Choose ``option`` in a dropdown the way a user does: open it, click the option."""
    page.locator(dropdown).click()
    page.locator(".dash-dropdown-option", has_text=option).first.click()
    page.keyboard.press("Escape")


def test_brw001_click_cluster_then_patch(page, server, shortcut_run) -> None:
    page.goto(server + "/?level=cluster")
    page.wait_for_selector(".strip")
    assert page.locator(".summary").inner_text().count("100.0%") == 3  # both accuracies, agreement
    assert _query(page)["run"] == ["watermark"]  # the newest run (same images as shortcut)
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
    # what the interval says against the run's bar, on the page (the mark clears 0.05)
    assert bool(top["significant"]) and "significant, beyond ±0.050" in detail.inner_text()
    summary = page.locator(".summary").inner_text()
    assert "Significance: the whole 95% interval beyond ±0.050 (--min-effect 0.050)" in summary

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
    names = [s.split("/")[-1].split("?")[0] for s in srcs]
    assert names == ["image.png", "a.png", "b.png", "diff.png"]
    # each pinned to the run as the page read it (its token), the same for all
    assert len({s.partition("?v=")[2][:12] for s in srcs}) == 1
    assert all("?v=" in s for s in srcs)
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
    page.wait_for_selector("#cluster-detail h2")  # filtered statistics take a moment
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


def test_brw003_filters_change_the_numbers_and_close_updates_the_url(
    page, server, marked_run
) -> None:
    p, img = marked_run.patches, marked_run.images
    page.goto(f"{server}/?run=watermark&level=cluster")
    page.wait_for_selector(".strip")
    assert _stat(page, "images") == "80" and _stat(page, "patches") == str(len(p))
    assert page.locator(".strip").count() == p["cluster"].nunique()

    _pick(page, "#f-class", "horizontal")  # through the dropdown, as a user does
    _wait_for_query(page, "class", "horizontal")
    kept = p[p["image_id"].isin(img.loc[img["label_name"] == "horizontal", "image_id"])]
    page.wait_for_function("document.querySelector('.summary').innerText.includes('40 / 80')")
    assert _stat(page, "patches") == f"{len(kept)} / {len(p)}"
    assert _stat(page, "clusters") == f"{kept['cluster'].nunique()} / {p['cluster'].nunique()}"
    assert _stat(page, "accuracy A · filtered") == "100.0%"
    assert page.locator(".strip").count() == kept["cluster"].nunique()
    for strip in page.locator(".strip").all():  # counts and thumbnails of the kept patches
        c = int(strip.locator(".strip-title").inner_text().split()[-1])
        mine = kept[kept["cluster"] == c]
        assert f"{len(mine)} patches · {mine['image_id'].nunique()} images" in strip.inner_text()
        srcs = strip.locator("img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
        assert {int(x.rsplit("/", 1)[1].split(".")[0]) for x in srcs} <= set(mine["patch_id"])

    # no image has B right and A wrong: every view says so instead of showing blank axes
    _pick(page, "#f-outcome", "only B right")
    _wait_for_query(page, "outcome", "only_b")
    page.wait_for_function(
        "['ranking', 'map'].every(id => document.getElementById(id).textContent"
        ".includes('No patches match these filters.'))"
    )
    assert _stat(page, "images") == "0 / 80" and _stat(page, "accuracy B · filtered") == "–"
    assert page.locator(".strip").count() == 0

    cluster = int(marked_run.clusters.iloc[0]["cluster"])
    page.goto(f"{server}/?run=watermark&cluster={cluster}")
    page.wait_for_selector(".gallery .patch")
    page.locator("#cluster-detail .close").click()
    page.wait_for_function("!location.search.includes('cluster=')")
    page.wait_for_selector("#cluster-detail >> text=Pick a cluster")
    page.locator(".strip").nth(1).click()
    page.wait_for_function("location.search.includes('cluster=')")
    assert _query(page)["cluster"] == [str(int(marked_run.clusters.iloc[1]["cluster"]))]
    assert page.console_errors == []


def test_brw004_a_truncated_table_shows_a_message_not_a_broken_page(
    browser, shortcut_run, tmp_path
) -> None:
    root = tmp_path / "runs"
    for table in ("concepts", "clusters"):  # what each level's ranking reads
        shutil.copytree(shortcut_run.path, root / table)
        data = (root / table / f"{table}.parquet").read_bytes()
        (root / table / f"{table}.parquet").write_bytes(data[: len(data) // 3])
    srv = make_server("127.0.0.1", 0, create_app(root).server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    page = browser.new_page(bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        for table, level in (("concepts", "concept"), ("clusters", "cluster")):
            page.goto(f"http://127.0.0.1:{srv.server_port}/?run={table}&level={level}")
            page.wait_for_selector(".error")
            text = page.locator(".error").first.inner_text()
            assert f"{table}.parquet: unreadable" in text and "re-run imacs analyze" in text
        assert errors == []
    finally:
        page.close()
        srv.shutdown()


_PLOT = "document.querySelector('#{id} .js-plotly-plot')"


def test_brw005_clicking_a_bar_marks_the_cluster_and_shows_it(page, server, marked_run) -> None:
    page.goto(f"{server}/?run=watermark&level=cluster")
    page.wait_for_selector(".strip")
    c = int(marked_run.clusters.iloc[1]["cluster"])
    # one <path> per bar: A's, B's and B − A's bars (three traces), each in rank order
    bar = page.locator("#ranking .barlayer .trace").nth(2).locator(".point path").nth(1)
    box = bar.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    _wait_for_query(page, "cluster", str(c))
    page.wait_for_selector(f"#cluster-detail >> text=Cluster {c} · rank 2")
    # marked in the ranking: a band across its row, and its strip
    mark = "#ranking .shapelayer path[style*='rgb(255, 200, 0)']"
    page.wait_for_selector(mark)
    band = page.locator(mark).first.bounding_box()
    box = bar.bounding_box()  # the page may have scrolled since
    assert band["y"] < box["y"] + box["height"] / 2 < band["y"] + band["height"]
    assert band["width"] > 2 * box["width"]
    # the grey band of the significance bar (±0.05 on the B − A panel) stays
    assert page.locator("#ranking .shapelayer path[style*='rgb(120, 120, 120)']").count() == 1
    assert page.locator(".strip.selected").count() == 1
    assert page.locator(".strip.selected").inner_text().startswith(f"#2 cluster {c}")
    # and the page scrolls to the cluster's detail
    page.wait_for_function(
        "Math.abs(document.getElementById('cluster-detail').getBoundingClientRect().top) < 2"
    )
    assert page.console_errors == []


def test_brw006_clicking_a_map_point_opens_its_cluster(page, server, marked_run) -> None:
    top = int(marked_run.clusters.iloc[0]["cluster"])
    page.goto(f"{server}/?run=watermark&cluster={top}")
    page.wait_for_selector(".gallery .patch")
    plot = _PLOT.format(id="map")
    n = marked_run.patches["cluster"].nunique()
    page.wait_for_function(f"{plot} && {plot}._fullData && {plot}._fullData.length === {n + 1}")
    # screen position and cluster of every point (a trace per cluster, named c<k>, then the
    # outline of the selected cluster)
    points = page.evaluate(
        f"""() => {{
            const gd = {plot}, fl = gd._fullLayout, r = gd.getBoundingClientRect();
            return gd._fullData.filter(t => t.name !== "selected").flatMap(tr =>
                Array.from(tr.x, (x, i) => [r.left + fl._size.l + fl.xaxis.l2p(x),
                                            r.top + fl._size.t + fl.yaxis.l2p(tr.y[i]),
                                            parseInt(tr.name.slice(1))]));
        }}"""
    )
    xy = [(x, y) for x, y, _ in points]
    clusters = [c for _, _, c in points]
    assert sorted(clusters) == sorted(marked_run.patches["cluster"].tolist())

    def room(i: int) -> float:  # distance to the nearest point of another cluster
        return min(
            ((xy[i][0] - x) ** 2 + (xy[i][1] - y) ** 2) ** 0.5
            for (x, y), c in zip(xy, clusters, strict=True)
            if c != clusters[i]
        )

    height = page.viewport_size["height"]
    i = max((i for i in range(len(xy)) if clusters[i] != top and xy[i][1] < height), key=room)
    assert room(i) > 10
    page.mouse.click(*xy[i])
    _wait_for_query(page, "cluster", str(int(clusters[i])))
    page.wait_for_selector(f"#cluster-detail >> text=Cluster {int(clusters[i])} ·")
    # the opened cluster's points are outlined (the last trace), without redrawing the map
    size = int((marked_run.patches["cluster"] == clusters[i]).sum())
    page.wait_for_function(f"{plot}._fullData.at(-1).x.length === {size}")
    assert page.console_errors == []


def test_brw007_a_cluster_says_what_its_images_share(page, server, marked_run) -> None:
    top = marked_run.clusters.iloc[0]
    c = int(top["cluster"])
    page.goto(f"{server}/?run=watermark")
    page.wait_for_selector(".strip")
    assert "mark = yes in 100% of images" in page.locator(".strip").first.inner_text()
    page.goto(f"{server}/?run=watermark&cluster={c}")
    page.wait_for_selector("#cluster-breakdown")
    text = page.locator("#cluster-breakdown").inner_text()
    assert "stand out by mark = yes: 100% of them, against 50% of all images" in text
    rows = page.locator("#cluster-breakdown tbody tr").all_inner_texts()
    assert any("B predicts" in r and "vertical" in r and "100%" in r for r in rows)
    # a gallery that stops says where
    big = marked_run.clusters[marked_run.clusters["n_patches"] > 24].iloc[0]
    page.goto(f"{server}/?run=watermark&cluster={int(big['cluster'])}")
    page.wait_for_selector(".gallery .patch")
    assert f"showing 24 of {int(big['n_patches'])}" in page.locator("#gallery-title").inner_text()
    assert page.locator(".gallery .patch").count() == 24
    assert page.console_errors == []


def test_brw008_run_picker_newest_first_and_filtered_download(page, server, runs, tmp_path) -> None:
    import csv

    from imacs_app.catalog import RunCatalog
    from imacs_app.reader import Filters

    page.goto(server + "/")
    page.wait_for_selector(".strip")
    page.locator("#run-picker").click()
    names = page.locator(".dash-dropdown-option").all_inner_texts()
    assert [n.split(" · ")[0] for n in names] == ["watermark", "shortcut", "looks"]
    page.locator(".dash-dropdown-option", has_text="shortcut").click()
    _wait_for_query(page, "run", "shortcut")
    page.wait_for_function(
        "document.getElementById('dl-clusters').getAttribute('href')"
        ".startsWith('/download/shortcut/')"
    )

    _pick(page, "#f-class", "vertical")
    _wait_for_query(page, "class", "vertical")
    page.wait_for_function(
        "document.getElementById('dl-clusters').getAttribute('href').includes('class=vertical')"
    )
    with page.expect_download() as info:
        page.locator("#dl-clusters").click()
    download = info.value
    assert "filtered" in download.suggested_filename
    target = tmp_path / "clusters.csv"
    download.save_as(target)
    rows = list(csv.DictReader(target.open()))
    expected = RunCatalog(runs).get("shortcut").clusters(Filters(classes=("vertical",)))
    assert [int(r["cluster"]) for r in rows] == expected["cluster"].tolist()
    assert page.console_errors == []


def test_brw009_the_map_has_a_cluster_legend_and_fills_its_card(page, server, marked_run) -> None:
    page.goto(f"{server}/?run=watermark&level=cluster")
    page.wait_for_selector(".strip")
    # a categorical legend, in ranking order, each entry the colour of its points
    page.wait_for_selector("#map .legend .traces")
    assert page.locator("#map .legend .legendtitletext").text_content() == "cluster"
    entries = page.locator("#map .legend .traces .legendtext").all_text_contents()
    assert entries == [f"c{k}" for k in marked_run.clusters["cluster"]]
    plot = _PLOT.format(id="map")
    colours = page.evaluate(f"() => {plot}.data.map(t => [t.name, (t.marker || {{}}).color])")
    assert len({c for name, c in colours if name != "selected"}) == len(entries)  # all unlike
    # a click on an entry hides its points; a double click shows them alone
    page.locator("#map .legend .traces").first.click()
    page.wait_for_function(f"{plot}._fullData[0].visible === 'legendonly'")
    page.wait_for_timeout(400)  # past plotly's double-click window
    page.locator("#map .legend .traces").nth(1).dblclick()
    page.wait_for_function(
        f"{plot}._fullData.filter(t => t.visible === true).map(t => t.name).join() === "
        f"'{entries[1]}'"
    )
    card = page.locator(".map-card").bounding_box()
    plot = page.locator("#map .main-svg").first.bounding_box()
    ranking_card = page.locator(".card", has=page.locator("#ranking")).bounding_box()
    assert card["height"] == ranking_card["height"]  # side by side, one row
    assert card["y"] + card["height"] - (plot["y"] + plot["height"]) < 30
    assert page.console_errors == []


def test_brw010_overlays_come_with_their_colour_scale(page, server, runs, marked_run) -> None:
    from imacs_app.catalog import RunCatalog
    from imacs_app.render import overlay_scale

    c = int(marked_run.clusters.iloc[0]["cluster"])
    image = int(marked_run.patches.query("cluster == @c")["image_id"].iloc[0])
    page.goto(f"{server}/?run=watermark&cluster={c}&image={image}")
    page.wait_for_selector(".panels .colorbar")
    scale = overlay_scale(RunCatalog(runs).get("watermark"), image)
    bars = page.locator(".panels .colorbar").all_inner_texts()
    assert len(bars) == 3  # A, B (one shared scale) and B − A
    top, lim = f"{scale.share_vs_average:.3g}×", f"{scale.diff_vs_average:.3g}×"
    assert bars[0] == bars[1] and bars[0].split() == [
        "0",
        f"{scale.share_vs_average / 2:.3g}×",
        "≥",
        top,
    ]
    assert bars[2].split() == ["≤", f"−{lim}", "0", "≥", f"+{lim}"]
    assert page.console_errors == []


def test_brw011_a_run_that_is_gone_is_reported(page, browser, shortcut_run, tmp_path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(shortcut_run.path, root / "keep")
    shutil.copytree(shortcut_run.path, root / "gone")  # the newest
    t = os.path.getmtime(root / "gone" / "run.json")
    os.utime(root / "keep" / "run.json", (t - 60, t - 60))
    with _serving(root) as url:
        # a link naming a run that does not exist
        page.goto(f"{url}/?run=nope&cluster=1")
        page.wait_for_selector("#notice .error")
        text = page.locator("#notice").inner_text()
        assert text.startswith("This run cannot be shown: no run named 'nope'")
        assert "Showing the newest run, gone, instead." in text
        assert _query(page)["run"] == ["gone"] and "cluster" not in _query(page)
        page.wait_for_selector(".strip")

        # removed while the page is open: picking it, or clicking anything, says so
        page.goto(f"{url}/?run=keep")
        page.wait_for_selector(".strip")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        shutil.rmtree(root / "gone")
        page.locator("#run-picker").click()
        page.locator(".dash-dropdown-option", has_text="gone").click()
        page.wait_for_selector("#notice .error")
        assert "no run named 'gone'" in page.locator("#notice").inner_text()
        assert _query(page)["run"] == ["keep"]
        page.locator("#run-picker").click()
        assert [
            o.split(" · ")[0] for o in page.locator(".dash-dropdown-option").all_inner_texts()
        ] == ["keep"]
        page.keyboard.press("Escape")

        shutil.copytree(shortcut_run.path, root / "gone")
        page.goto(f"{url}/?run=gone")
        page.wait_for_selector(".strip")
        page.wait_for_function("document.getElementById('notice').innerText === ''")
        # its pictures loaded first: a picture asked for after the removal rightly 404s
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        shutil.rmtree(root / "gone")
        page.locator(".strip").first.click()
        page.wait_for_selector("#notice .error")
        assert "no run named 'gone'" in page.locator("#notice").inner_text()
        _wait_for_query(page, "run", "keep")
        page.wait_for_selector("#strips .strip")
    assert page.console_errors == []


def test_brw012_the_app_works_under_its_content_security_policy(browser, server) -> None:
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
        page.wait_for_selector("#map canvas")  # the WebGL scatter drew (needs eval)
        assert "WebGL is not supported" not in page.inner_text("#map")
        assert problems == []  # a CSP violation is reported as a console error
    finally:
        page.close()


def test_brw013_evidence_what_if_trust_agreement_and_relative_ranking(
    page, server, shortcut_run
) -> None:
    top = shortcut_run.clusters.iloc[0]
    page.goto(f"{server}/?run=shortcut&level=cluster")
    page.wait_for_selector(".strip")
    summary = page.locator(".summary").inner_text()
    median = shortcut_run.manifest["summary"]["map_spearman_median"]
    assert f"Spearman {median:.2f}" in page.locator("#map-agreement").inner_text()
    for r in ("a", "b"):  # each model's trust line, as run.json says it
        trust = shortcut_run.manifest["trust"][r]
        assert trust["reading"] in summary
        assert f"infidelity {trust['infidelity']:.3g} (shuffled maps" in summary
    # the what-if verdict sits in the ranking, where a user reads first
    strip = page.locator(".strip").first.inner_text()
    assert f"what-if: B depends — {top['whatif_verdict']}" in strip
    # the cluster's most typical patch (the strip's first, nearest its centre)
    src = page.locator(".strip").first.locator("img").first.get_attribute("src")
    typical = int(src.split("/")[-1].split(".")[0])
    typical_image = int(shortcut_run.patches.set_index("patch_id").loc[typical, "image_id"])

    page.locator(".strip").first.click()
    page.wait_for_selector("#whatif table")
    panel = page.locator("#whatif")
    assert "B depends" in panel.inner_text()
    rows = panel.locator("tbody tr")
    flip_b = rows.nth(1).locator("td.flip").inner_text()
    assert flip_b == f"{top['whatif_flip_b']:.0%}" and float(flip_b.rstrip("%")) >= 80
    assert rows.nth(0).locator("td.flip").inner_text() == f"{top['whatif_flip_a']:.0%}"
    # before/after pictures: the removed version is a real rendering, not a broken image
    removed = panel.locator("img.removed")
    assert removed.count() >= 1
    removed.first.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#whatif img.removed')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    # under each pair, both models' predictions before -> after removal, as the run stored
    after = shortcut_run.whatif_images.set_index(["cluster", "image_id"])
    caption = panel.locator(".pair figcaption").first.inner_text()
    image = int(caption.split()[1])
    assert image == typical_image  # the examples start with the most typical, not by id
    got = after.loc[(int(top["cluster"]), image)]
    classes = shortcut_run.classes
    before = shortcut_run.images.set_index("image_id").loc[image]
    assert f"B: {classes[int(before['pred_b'])]} → {classes[int(got['pred_b_after'])]}" in caption
    assert f"A: {classes[int(before['pred_a'])]} → {classes[int(got['pred_a_after'])]}" in caption
    flipped = shortcut_run.whatif_images.query(f"cluster == {int(top['cluster'])}")
    b_pred = shortcut_run.images.set_index("image_id").loc[flipped["image_id"], "pred_b"]
    assert (flipped["pred_b_after"].to_numpy() != b_pred.to_numpy()).mean() == top["whatif_flip_b"]

    # relative reliance: the toggle re-ranks, and the URL keeps it
    page.locator("#rank-measure label", has_text="relative reliance").click()
    _wait_for_query(page, "measure", "relative")
    page.wait_for_function(
        "() => document.querySelector('#ranking').innerText.includes('relative reliance')"
    )
    rel = shortcut_run.clusters.reindex(
        shortcut_run.clusters["diff_rel"].abs().sort_values(ascending=False, kind="stable").index
    )
    first = page.locator(".strip").first.inner_text()
    assert first.startswith(f"#1 cluster {int(rel.iloc[0]['cluster'])}")
    assert f"B − A {rel.iloc[0]['diff_rel']:+.3f} relative" in first
    # images with a single salient patch are left out of it, and the page says how many
    sizes = shortcut_run.patches.groupby("image_id").size()
    alone = int((sizes < 2).sum())
    said = f"Relative reliance leaves out {alone} of {len(sizes)} images"
    assert (said in page.inner_text("body")) == (alone > 0)
    assert page.console_errors == []


def test_brw014_gallery_of_images_where_the_maps_disagree_most(page, server, marked_run) -> None:
    img = marked_run.images
    page.goto(f"{server}/?run=watermark")
    page.wait_for_selector("#disagreement-gallery .patch")
    order = img.sort_values(["map_spearman", "image_id"]).head(12)
    captions = page.locator("#disagreement-gallery .patch-caption").all_inner_texts()
    assert captions == [
        f"ρ {r.map_spearman:+.2f} · IoU {r.map_iou_top10:.2f}" for r in order.itertuples()
    ]
    assert f"lowest of {len(img)} images" in page.locator("#agreement").inner_text()
    # the gallery follows the filters: only images with the mark
    page.goto(f"{server}/?run=watermark&meta=mark%3Dyes")
    page.wait_for_selector("#disagreement-gallery .patch")
    marked = img[img["mark"] == "yes"]
    assert f"lowest of {len(marked)} images" in page.locator("#agreement").inner_text()
    first = marked.sort_values(["map_spearman", "image_id"]).iloc[0]
    page.locator("#disagreement-gallery .patch").first.click()
    _wait_for_query(page, "image", str(int(first["image_id"])))
    page.wait_for_selector(".panels img")
    assert f"Image {int(first['image_id'])}:" in page.locator("#image-detail").inner_text()
    assert page.console_errors == []


def test_brw015_concepts_rank_first_and_their_clusters_are_one_click_away(
    page, server, looks_run
) -> None:
    concepts, clusters = looks_run.concepts, looks_run.clusters
    top = concepts.iloc[0]
    k = int(top["concept"])
    page.goto(f"{server}/?run=looks")
    page.wait_for_selector(".strip")
    assert page.locator("#ranking-title").inner_text() == "Concepts, ranked by |B − A|"
    assert page.locator(".strip").count() == len(concepts) < len(clusters)
    assert _stat(page, "concepts") == str(len(concepts))
    first = page.locator(".strip").first.inner_text()
    assert first.startswith(f"#1 concept {k} · {int(top['n_clusters'])} clusters")
    assert f"B − A {top['diff']:+.3f}" in first
    assert f"alone: A says {top['alone_a']}" in first and f"B says {top['alone_b']}" in first
    assert "what-if: B depends" in first
    # the map is coloured by concept
    page.wait_for_selector("#map .legend .traces")
    assert page.locator("#map .legend .legendtitletext").text_content() == "concept"
    entries = page.locator("#map .legend .traces .legendtext").all_text_contents()
    assert entries == [f"c{i}" for i in concepts["concept"]]  # as ranked

    page.locator(".strip").first.click()
    _wait_for_query(page, "concept", str(k))
    page.wait_for_selector("#concept-members .member")
    detail = page.locator("#cluster-detail").inner_text()
    assert f"Concept {k} · rank 1" in detail
    assert f"make A say {top['alone_a']} ({top['alone_a_share']:.0%})" in detail
    members = page.locator("#concept-members .member")
    title = ".strip-title"
    shown = sorted(
        int(members.nth(i).locator(title).inner_text().split()[1]) for i in range(members.count())
    )
    assert shown == sorted(int(c) for c in top["clusters"].split())
    # the concept's own what-if test
    flip_b = page.locator("#whatif tbody tr").nth(1).locator("td.flip").inner_text()
    assert flip_b == f"{top['whatif_flip_b']:.0%}"
    removed = page.locator("#whatif img.removed").first
    assert "level=concept" in removed.get_attribute("src")

    # one click: a member cluster, at the cluster level
    c = int(members.first.locator(title).inner_text().split()[1])
    members.first.click()
    _wait_for_query(page, "cluster", str(c))
    page.wait_for_selector(f"#cluster-detail >> text=Cluster {c} ·")
    assert page.locator("#ranking-title").inner_text() == "Clusters, ranked by |B − A|"
    page.wait_for_function(
        "document.querySelector('#rank-level input[value=cluster]').checked"
    )  # the toggle says so too
    page.wait_for_function(f"document.querySelectorAll('.strip').length == {len(clusters)}")
    page.wait_for_selector(".strip.selected")
    assert page.locator(".strip.selected .strip-title").inner_text().endswith(f"cluster {c}")
    # and back to its concept
    page.locator("#concept-members button.link", has_text=f"concept {k}").click()
    _wait_for_query(page, "concept", str(k))
    page.wait_for_selector(f"#cluster-detail >> text=Concept {k} · rank 1")
    page.wait_for_function("document.querySelector('#rank-level input[value=concept]').checked")
    # the level toggle: plain clusters, and the open concept stays open as its largest
    # cluster (the URL's cluster=N names the level)
    mine = clusters[clusters["concept"] == k].sort_values(
        ["n_patches", "cluster"], ascending=[False, True]
    )
    largest = int(mine.iloc[0]["cluster"])
    page.locator("#rank-level label", has_text="clusters").click()
    _wait_for_query(page, "cluster", str(largest))
    page.wait_for_selector(f"#cluster-detail >> text=Cluster {largest} ·")
    page.wait_for_function(f"document.querySelectorAll('.strip').length == {len(clusters)}")
    # and back: the concept that holds it
    page.locator("#rank-level label", has_text="concepts").click()
    _wait_for_query(page, "concept", str(k))
    page.wait_for_selector(f"#cluster-detail >> text=Concept {k} · rank 1")
    # with nothing open, the toggle keeps the level in the URL
    page.locator("#cluster-detail button.close").first.click()
    page.wait_for_function("!new URLSearchParams(location.search).has('concept')")
    page.locator("#rank-level label", has_text="clusters").click()
    _wait_for_query(page, "level", "cluster")
    assert page.console_errors == []


def test_brw016_a_run_of_the_previous_format_opens_in_the_dashboard(page, tmp_path) -> None:
    """A run written by the last format-1 release (tests/fixtures/run_v1) opens through
    upgrade(): its concept ranking, what-if verdict and detail, with no console error."""
    root = tmp_path / "runs"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run_v1", root / "old")
    with _serving(root) as url:
        page.goto(f"{url}/?run=old")
        page.wait_for_selector(".strip")
        assert page.locator(".strip").count() == 3
        first = page.locator(".strip").first.inner_text()
        assert first.startswith("#1 concept 2"), first
        assert "B − A +0.819" in first, first
        assert "what-if: B depends" in first
        page.locator(".strip").first.click()
        _wait_for_query(page, "concept", "2")
        page.wait_for_selector("#cluster-detail >> text=Concept 2 · rank 1")
        assert page.locator("#whatif tbody tr").nth(1).locator("td.flip").inner_text() == "100%"
    assert page.console_errors == []


def test_brw017_the_meta_filter_shows_only_for_runs_with_meta_annotations(
    page, server, marked_run
) -> None:
    assert marked_run.info.meta_columns == ["mark"]
    page.goto(f"{server}/?run=watermark")
    page.wait_for_selector(".strip")
    page.wait_for_selector("#f-meta", state="visible")
    page.goto(f"{server}/?run=shortcut")  # no meta columns: no empty dropdown
    page.wait_for_selector(".strip")
    page.wait_for_selector("#f-meta", state="hidden")
    # and back through the run picker
    page.locator("#run-picker").click()
    page.locator(".dash-dropdown-option", has_text="watermark").click()
    _wait_for_query(page, "run", "watermark")
    page.wait_for_selector("#f-meta", state="visible")
    assert page.console_errors == []


def test_brw018_the_map_and_the_histogram_follow_the_window(browser, server) -> None:
    """Made narrower, the window reflows the map and the agreement histogram inside their
    cards (they overflowed until a reload)."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
    widths = """() => ['#map', '#agreement'].map(sel => {
        const card = document.querySelector(sel);
        const svg = card && card.querySelector('.main-svg');
        return svg ? [svg.getBoundingClientRect().width, card.getBoundingClientRect().width]
                   : null;
    })"""
    try:
        page.goto(f"{server}/?run=watermark")
        page.wait_for_selector("#map .main-svg")
        page.wait_for_selector("#agreement .main-svg")
        wide = page.evaluate(widths)
        page.set_viewport_size({"width": 1100, "height": 1000})  # still two columns
        page.wait_for_function(
            f"() => ({widths})().every(w => w && w[0] <= w[1] + 1)", timeout=10_000
        )
        narrow = page.evaluate(widths)
        for (svg_w, _), (svg_n, _) in zip(wide, narrow, strict=True):
            assert svg_n < svg_w  # it shrank with its card, not merely fits by chance
    finally:
        page.close()


def test_brw019_a_composed_query_slices_every_view(page, server, runs, marked_run) -> None:
    """Type a query that composes a meta-annotation, a model outcome and a patch condition;
    the ranking shows the slice's numbers, as the same query through the API gives them."""
    from imacs_app.catalog import RunCatalog
    from imacs_app.reader import Filters

    sql = (
        "SELECT * FROM images WHERE mark = 'no' AND a_correct "
        "AND image_id IN (SELECT image_id FROM patches WHERE attr_a > 0.3)"
    )
    view = RunCatalog(runs).get("watermark").at("cluster")
    f = Filters(query=sql)
    want = view.clusters(f).set_index("cluster")
    n_images = int(view.image_mask(f).sum())
    assert 0 < n_images < len(marked_run.images)
    page.goto(f"{server}/?run=watermark&level=cluster")
    page.wait_for_selector(".strip")
    page.fill("#q-sql", sql)
    page.press("#q-sql", "Enter")
    _wait_for_query(page, "q", sql)
    page.wait_for_selector(f".query-slice >> text=every view below shows {n_images} images")
    page.wait_for_selector(f".stat .value >> text='{n_images} / {len(marked_run.images)}'")
    assert _stat(page, "images") == f"{n_images} / {len(marked_run.images)}"
    first = page.locator(".strip").first.inner_text()
    k = int(re.search(r"#1 cluster (\d+)", first)[1])
    assert f"B − A {want.loc[k, 'diff']:+.3f}" in first
    # a link keeps the query; a wrong one says why under the box and slices nothing
    page.goto(f"{server}/?run=watermark&level=cluster&q=DROP+VIEW+images")
    page.wait_for_selector(".query-error >> text=DROP statements are not allowed")
    assert "(not applied)" in page.locator(".query-error").inner_text()
    # an example one click away; a result without ids shows as a table
    page.get_by_role("button", name="concepts per class").click()
    page.wait_for_selector(".query-table table")
    assert "no image_id or patch_id column" in page.locator("#q-out").inner_text()
    assert page.console_errors == []


def test_brw020_slice_against_slice_shows_each_models_change_and_opens_a_concept(
    page, server, runs, marked_run
) -> None:
    """Put the unmarked images (the query box) against the marked ones (the versus box):
    the table shows the numbers the API gives, a link keeps both slices, a group's name
    opens it, and a slice that selects nothing says why."""
    want = marked_run.compare_slices("mark=no", "mark=yes").set_index("concept")
    top = int(marked_run.concepts.iloc[0]["concept"])  # B's mark: only in the marked images
    page.goto(f"{server}/?run=watermark&q=mark%3Dno")
    page.wait_for_selector(".strip")
    page.fill("#vs-sql", "mark=yes")
    page.press("#vs-sql", "Enter")
    _wait_for_query(page, "vs", "mark=yes")
    row = page.locator(".versus-row", has_text=f"concept {top} ")
    row.wait_for()
    text = row.inner_text()
    assert "(only in Y)" in text
    lo, hi = want.loc[top, "diff_y_lo"], want.loc[top, "diff_y_hi"]
    assert f"{want.loc[top, 'diff_y']:+.3f} [{lo:+.3f}, {hi:+.3f}]" in text
    summary = page.locator(".versus-summary").inner_text()
    assert "X: mark=no; Y: mark=yes" in summary and "simultaneous interval" in summary
    # rank by B - A within Y: the mark comes first
    page.goto(f"{server}/?run=watermark&q=mark%3Dno&vs=mark%3Dyes&vsby=y")
    page.wait_for_selector(".versus-row")
    assert f"concept {top}" in page.locator(".versus-row").first.inner_text()
    page.locator(".versus-row").first.get_by_role("button").click()
    _wait_for_query(page, "concept", str(top))
    # a versus slice that selects nothing says so and compares nothing
    page.fill("#vs-sql", "mark=maybe")
    page.press("#vs-sql", "Enter")
    page.wait_for_selector("#vs-out .query-error >> text=slice Y holds no patch")
    assert page.console_errors == []


def test_brw021_inside_the_models_shows_where_each_model_decides_a_concept(
    page, demo, tmp_path
) -> None:
    """The demo's models are eager: a concept's panel shows, per model, the decided-at
    sentence the API gives, the channels of its last two layers with the flip rates of the
    ablation check as stored, their top patches (one opens its image) and the concept's
    CKA; the run's part, opened, shows both models on every image."""
    from imacs.layers import ablation_sentence, decided_at, depth_name

    ag, ch, cka = demo.layer_agreement, demo.layer_channels, demo.layer_cka
    t = demo.info.layers["decided"]
    k = int(demo.concepts.sort_values("rank").iloc[0]["concept"])
    assert len(ch[ch["concept"] == k]) and len(cka[cka["concept"] == k])
    with _serving(demo.path) as url:
        page.goto(f"{url}/?run={demo.path.name}&concept={k}")
        page.wait_for_selector(".inside-models .inside-b .main-svg")
        page.wait_for_selector(".inside-models .inside-a .main-svg")
        for role in ("b", "a"):
            model = page.locator(f".inside-models .inside-{role}")
            on = depth_name(ag, role, decided_at(ag, role, k, "agree", t))
            off = depth_name(ag, role, decided_at(ag, role, k, "agree_without", t))
            want = f"{role.upper()} decides it at {on} on its images, at {off} elsewhere."
            assert model.locator(".inside-decided").inner_text() == want
            rows = ch[(ch["concept"] == k) & (ch["role"] == role)]
            layers = model.locator(".inside-layer")
            assert layers.count() == rows["depth"].nunique() == 2  # its last two layers
            for i, (_, g) in enumerate(rows.sort_values(["depth", "rank"]).groupby("depth")):
                shown = layers.nth(i)
                first = g.iloc[0]
                assert shown.locator(".flip-top").inner_text() == f"{first['flip_top']:.1%}"
                assert shown.locator(".flip-random").inner_text() == f"{first['flip_random']:.1%}"
                if int(first["n_zeroed"]) != len(g):
                    top_k = shown.locator(".flip-top-k").inner_text()
                    assert top_k == f"{first['flip_top_k']:.1%}"
                    random_k = shown.locator(".flip-random-k").inner_text()
                    assert random_k == f"{first['flip_random_k']:.1%}"
                check = ablation_sentence(g)
                assert shown.locator(".inside-ablation").inner_text() == (
                    check[0].upper() + check[1:] + "."
                )
                channels = shown.locator(".inside-channel")
                assert channels.count() == len(g)
                for j, r in enumerate(g.itertuples()):
                    text = channels.nth(j).inner_text()
                    assert f"channel {r.channel}" in text and f"share {r.share:.1%}" in text
                    srcs = (
                        channels.nth(j)
                        .locator("img")
                        .evaluate_all("els => els.map(e => e.getAttribute('src'))")
                    )
                    pids = r.top_patches.split(",")
                    assert [s.split("/")[-1].split(".")[0] for s in srcs] == pids
        n_images = int(ag[(ag["concept"] == k)]["n_images"].iloc[0])
        title = page.locator(".inside-models + .inside-cka h3").inner_text()
        assert title == f"How A's layers resemble B's on concept {k}'s {n_images} images"
        page.wait_for_selector(".inside-models + .inside-cka .main-svg")
        # a channel's top patch opens its image
        button = page.locator(".inside-b .inside-patch").first
        pid = int(button.locator("img").get_attribute("alt").split()[-1])
        image = int(demo.patches.set_index("patch_id").loc[pid, "image_id"])
        button.click()
        _wait_for_query(page, "image", str(image))
        page.wait_for_selector(f"#image-detail >> text=Image {image}", timeout=10_000)
        # every image, once opened: each model's decided-at depth on all images
        page.locator("#inside-run-summary").click()
        page.wait_for_selector("#inside-run-body .main-svg")
        body = page.locator("#inside-run-body").inner_text()
        for role in ("a", "b"):
            d = depth_name(ag, role, decided_at(ag, role, -1, "agree", t))
            assert f"of the images from {d}." in body
        assert f"on all {len(demo.images)} images" in body
    assert page.console_errors == []


def test_brw022_inside_the_models_says_why_a_run_or_model_has_none(
    page, server, looks_run, tmp_path
) -> None:
    """A TorchScript model takes no hooks: each model's part is the manifest's sentence; a
    run made before the stage says how to get the view; at the cluster level a line says
    the view is per concept."""
    absent = looks_run.info.layers["absent"]
    assert set(absent) == {"a", "b"} and looks_run.layer_agreement.empty
    top = int(looks_run.concepts.sort_values("rank").iloc[0]["concept"])
    page.goto(f"{server}/?run=looks&concept={top}")
    page.wait_for_selector(".inside-b .inside-absent")
    assert page.locator(".inside-b .inside-absent").inner_text() == absent["b"]
    assert page.locator(".inside-a .inside-absent").inner_text() == absent["a"]
    assert "CKA needs both models' layers." in page.locator(".inside-cka").inner_text()
    page.goto(f"{server}/?run=looks&level=cluster&cluster=0")
    page.wait_for_selector("#inside-concept >> text=looked at per concept")
    root = tmp_path / "runs"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run_v1", root / "old")
    with _serving(root) as url:
        page.goto(f"{url}/?run=old&concept=2")
        page.wait_for_selector(".inside-without")
        line = page.locator(".inside-without").inner_text()
        assert "made without the view inside the models" in line
        assert "--layers is on by default" in line
    assert page.console_errors == []
