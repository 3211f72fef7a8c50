"""Callbacks. One callback owns the URL (the view state); renderers hang off small keys
derived from it, each set only when its part of the state changed, so a click re-renders
only what it affects (the 100k-point map is not resent when a cluster is picked)."""

from __future__ import annotations

import functools
import re
import time
from urllib.parse import quote

import numpy as np
import pandas as pd
from dash import ALL, Dash, Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from imacs.errors import InputError

from . import figures
from .reader import DIVERGING_CSS, INFERNO_CSS, RunCatalog, RunView, overlay_scale
from .state import ViewState, parse_search

#: patches shown in a cluster's gallery
GALLERY = 24
#: values shown per column in a cluster's breakdown
BREAKDOWN_VALUES = 3
#: what every view says when the filters leave nothing
NO_MATCH = "No patches match these filters."


def _view(catalog: RunCatalog, state: ViewState) -> RunView:
    """The state's run; InputError (shown by :func:`_guarded`) if it is gone."""
    return catalog.get(state.run)


def _files(view, sub: str) -> str:
    return f"/files/{quote(view.run_id)}/thumbs/{sub}"


def _render(view, image_id: int, kind: str, patch: int | None = None) -> str:
    q = f"?patch={patch}" if patch is not None else ""
    return f"/render/{quote(view.run_id)}/{image_id}/{kind}.png{q}"


def _problem(exc: Exception | str) -> str:
    """The one wording for a run that cannot be shown, wherever it is shown."""
    return f"This run cannot be shown: {exc}"


def _guarded(n_outputs: int, blank: tuple = ()):
    """Show a run's read error (a truncated table, a missing file, a run removed while the
    page was open) in the first output instead of failing the callback; the other outputs
    are set to ``blank`` (default: they keep what they showed)."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            try:
                return fn(*args)
            except InputError as exc:
                msg = html.Div(_problem(exc), className="error")
                rest = blank or (no_update,) * (n_outputs - 1)
                return msg if n_outputs == 1 else (msg, *rest)

        return inner

    return wrap


_RANK_LABEL = re.compile(r"c(-?\d+)$")


def _clicked_cluster(click: dict | None, source: str, s: ViewState, catalog: RunCatalog) -> int:
    """The cluster of a clicked ranking bar or map point.

    Reads the point's ``customdata`` when the click carries it. Dash leaves it out when
    the figure sent it as a typed array (plotly does so for numpy arrays, as for the map's
    100k points), so the fallbacks use what every click carries: the bar's category label
    ("#2 · c5"), or the map point's index in the filtered patch table, checked against
    its coordinates (the nearest patch wins if the map was redrawn in between).
    """
    points = (click or {}).get("points") or []
    if not points:
        raise PreventUpdate
    pt = points[0]
    custom = pt.get("customdata")
    if isinstance(custom, list):
        custom = custom[0] if custom else None
    if custom is not None:
        try:
            return int(custom)
        except (TypeError, ValueError):
            pass
    if source == "ranking":
        found = _RANK_LABEL.search(str(pt.get("y", pt.get("label", ""))))
        if found:
            return int(found.group(1))
        raise PreventUpdate
    if pt.get("curveNumber", 0) == 1 and s.cluster is not None:
        return s.cluster  # the outline of the selected cluster's points
    try:
        patches = _view(catalog, s).filtered_patches(s.filters)
    except InputError:
        raise PreventUpdate from None
    index = pt.get("pointIndex", pt.get("pointNumber"))
    x, y = pt.get("x"), pt.get("y")
    if isinstance(index, int) and 0 <= index < len(patches):
        row = patches.iloc[index]
        if (
            x is None
            or y is None
            or (abs(round(row["proj_x"], 3) - x) < 1e-6 and abs(round(row["proj_y"], 3) - y) < 1e-6)
        ):
            return int(row["cluster"])
    if x is None or y is None or patches.empty:
        raise PreventUpdate
    near = (patches["proj_x"] - x) ** 2 + (patches["proj_y"] - y) ** 2
    return int(patches["cluster"].to_numpy()[int(np.argmin(near.to_numpy()))])


def _trait(column: str, value: str) -> str:
    """How a breakdown value reads in a sentence: ``B predicts urban``, ``class forest``,
    ``site = north`` (a meta-annotation)."""
    if column in ("A predicts", "B predicts", "class"):
        return f"{column} {value}"
    return f"{column} = {value}"


def _pct(x: float) -> str:
    return "–" if x != x else f"{x:.1%}"  # NaN: no image passes the filters


def _run_label(rid: str, path) -> str:
    try:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime((path / "run.json").stat().st_mtime))
    except OSError:
        return rid
    return f"{rid} · {made}"


def register(app: Dash, catalog: RunCatalog) -> None:
    def _options(view: RunView | None):
        runs = [{"label": _run_label(r, d), "value": r} for r, d in catalog.run_dirs().items()]
        if view is None:
            return runs, [], []
        classes = [{"label": c, "value": c} for c in view.run.classes]
        meta = [{"label": f"{k} = {v}", "value": f"{k}={v}"} for k, v in view.meta_options]
        return runs, classes, meta

    def _load(s: ViewState, search: str | None):
        """Every output for opening the state's run; a run that is gone (removed while the
        page was open, or never made) is reported and the newest run shown instead."""
        notice = None
        try:
            view = catalog.get(s.run)
        except InputError as exc:
            notice = _problem(exc)
            try:
                view = catalog.get(None)
            except InputError as none_left:
                runs, _, _ = _options(None)
                msg = html.Div(_problem(none_left), className="error")
                return (no_update, runs, None, [], [], None, [], [], s.color, msg)
            notice = f"{notice}. Showing the newest run, {view.run_id}, instead."
            s = ViewState(color=s.color)
        s = s.with_(run=view.run_id)
        canonical = s.to_search()
        runs, class_opts, meta_opts = _options(view)
        return (
            canonical if canonical != (search or "") else no_update,
            runs,
            s.run,
            class_opts,
            list(s.classes),
            s.outcome,
            meta_opts,
            [f"{k}={v}" for k, v in s.meta],
            s.color,
            html.Div(notice, className="error") if notice else None,
        )

    @app.callback(
        Output("url", "search"),
        Output("run-picker", "options"),
        Output("run-picker", "value"),
        Output("f-class", "options"),
        Output("f-class", "value"),
        Output("f-outcome", "value"),
        Output("f-meta", "options"),
        Output("f-meta", "value"),
        Output("map-color", "value"),
        Output("notice", "children"),
        Input("url", "search"),
        Input("run-picker", "value"),
        Input("f-class", "value"),
        Input("f-outcome", "value"),
        Input("f-meta", "value"),
        Input("map-color", "value"),
        Input("ranking", "clickData"),
        Input("map", "clickData"),
        Input({"type": "strip", "cluster": ALL}, "n_clicks"),
        Input({"type": "pick-cluster", "cluster": ALL}, "n_clicks"),
        Input({"type": "pick-image", "image": ALL}, "n_clicks"),
        Input({"type": "close", "what": ALL}, "n_clicks"),
    )
    def state(search, run, classes, outcome, meta, colour, rank_click, map_click, *_clicks):
        """The URL is the source of truth; controls and clicks rewrite it.

        Dropdown options and values are always set together, so a value never arrives
        before the option it needs (Dash 4 drops such values).
        """
        trig = ctx.triggered_id
        s = parse_search(search)
        if trig is None or trig == "url":
            return _load(s, search)
        if s.run is None or s.run not in catalog.run_dirs():
            return _load(s, search)  # removed while the page was open
        value = ctx.triggered[0]["value"] if ctx.triggered else None
        if trig == "run-picker":
            if not run or run == s.run:
                raise PreventUpdate
            return _load(ViewState(run=run, color=s.color), search)
        if trig in ("f-class", "f-outcome", "f-meta"):
            pairs = tuple(tuple(m.split("=", 1)) for m in (meta or []) if "=" in m)
            s = s.with_(
                classes=tuple(classes or ()), outcome=outcome or None, meta=pairs, image=None
            )
        elif trig == "map-color":
            s = s.with_(color=colour or "cluster")
        elif trig in ("ranking", "map"):
            click = rank_click if trig == "ranking" else map_click
            s = s.with_(cluster=_clicked_cluster(click, trig, s, catalog), image=None)
        elif isinstance(trig, dict) and value:  # a button; None/0 when it was just rendered
            if trig["type"] in ("strip", "pick-cluster"):
                s = s.with_(cluster=int(trig["cluster"]), image=None)
            elif trig["type"] == "pick-image":
                s = s.with_(image=int(trig["image"]))
            elif trig["type"] == "close":
                s = s.with_(**{trig["what"]: None})
        else:
            raise PreventUpdate
        new = s.to_search()
        if new == (search or ""):
            raise PreventUpdate
        return (new, *(no_update,) * 8, None)

    def _key(keep):
        def derive(search, old):
            s = parse_search(search)
            if s.run is None:
                raise PreventUpdate  # the state callback fills in the run first
            new = keep(s)
            if new == old:
                raise PreventUpdate
            return new

        return derive

    app.callback(Output("key-data", "data"), Input("url", "search"), State("key-data", "data"))(
        _key(lambda s: s.with_(cluster=None, image=None, color="cluster").to_search())
    )
    app.callback(Output("key-map", "data"), Input("url", "search"), State("key-map", "data"))(
        _key(lambda s: s.with_(cluster=None, image=None).to_search())
    )
    app.callback(
        Output("key-cluster", "data"), Input("url", "search"), State("key-cluster", "data")
    )(_key(lambda s: s.with_(image=None, color="cluster").to_search()))
    app.callback(Output("key-image", "data"), Input("url", "search"), State("key-image", "data"))(
        _key(lambda s: s.with_(color="cluster").to_search())
    )

    @app.callback(
        Output("summary", "children"),
        Output("dl-clusters", "href"),
        Output("dl-patches", "href"),
        Output("ranking", "figure"),
        Output("strips", "children"),
        Input("key-data", "data"),
    )
    @_guarded(5, blank=("", "", figures.empty("See the message above."), []))
    def data_views(key):
        s = parse_search(key)
        view = _view(catalog, s)
        m = view.run.manifest
        names = view.run.names
        f = s.filters
        clusters = view.clusters(f)
        summ = view.summary(f)
        settings = m["settings"]
        ig = settings["attribution"]

        def count(kept: str, total: str) -> str:
            return f"{summ[kept]} / {summ[total]}" if f.active else str(summ[total])

        tag = " · filtered" if f.active else ""
        summary = [
            html.Div(
                className="models",
                children=[
                    html.Span([html.B("A "), names["a"]], className="model-a"),
                    html.Span(" vs ", className="vs"),
                    html.Span([html.B("B "), names["b"]], className="model-b"),
                ],
            ),
            html.Div(
                className="stats",
                children=[
                    _stat(f"accuracy A{tag}", _pct(summ["accuracy_a"])),
                    _stat(f"accuracy B{tag}", _pct(summ["accuracy_b"])),
                    _stat(f"agreement{tag}", _pct(summ["agreement"])),
                    _stat("images", count("n_images", "n_images_total")),
                    _stat("skipped", str(summ["n_skipped"])),
                    _stat("patches", count("n_patches", "n_patches_total")),
                    _stat("clusters", count("n_clusters", "n_clusters_total")),
                ],
            ),
            html.Div(
                f"IG {ig['steps']} steps, {ig['baseline']} baseline, target {ig['target']}; "
                f"input {settings['preprocess']['image_size'][0]}"
                f"x{settings['preprocess']['image_size'][1]}; {len(view.run.classes)} classes; "
                f"seed {settings['seed']}; made {m['created']}",
                className="settings",
            ),
        ]
        problems = catalog.problems()
        if problems:
            summary.append(
                html.Div(
                    className="warning",
                    children=[f"{len(problems)} run(s) here cannot be read and are not listed: "]
                    + [html.Div(f"{k}: {why}") for k, why in sorted(problems.items())],
                )
            )
        qs = s.with_(run=None).to_search()
        dl_c = f"/download/{quote(view.run_id)}/clusters.csv{qs}"
        dl_p = f"/download/{quote(view.run_id)}/patches.csv{qs}"
        if clusters.empty:
            return (
                summary,
                dl_c,
                dl_p,
                figures.empty(NO_MATCH, height=200),
                [],
            )
        reps = view.representatives(f)
        traits = view.cluster_traits(f)
        strips = []
        for r in clusters.itertuples():
            c = int(r.cluster)
            if c in traits.index:
                t = traits.loc[c]
                stands_out = f"{_trait(t['column'], t['value'])} in {t['share']:.0%} of images"
            else:
                stands_out = f"mostly {r.top_class}"
            strips.append(
                html.Button(
                    id={"type": "strip", "cluster": c},
                    className="strip",
                    n_clicks=0,
                    children=[
                        html.Div(
                            className="strip-head",
                            children=[
                                html.Span(f"#{int(r.rank)} cluster {c}", className="strip-title"),
                                html.Span(
                                    f"B − A {r.diff:+.3f}",
                                    className="pos" if r.diff >= 0 else "neg",
                                ),
                                html.Span(f"{int(r.n_patches)} patches · {int(r.n_images)} images"),
                                html.Span(stands_out, className="strip-trait"),
                            ],
                        ),
                        html.Div(
                            className="thumbs",
                            children=[
                                html.Img(
                                    src=_files(view, f"patches/{pid}.jpg"),
                                    alt=f"patch {pid}",
                                )
                                for pid in reps.get(c, [])
                            ],
                        ),
                    ],
                )
            )
        return (
            summary,
            dl_c,
            dl_p,
            figures.ranking(clusters, names, None),
            strips,
        )

    @app.callback(
        Output("ranking", "figure", allow_duplicate=True),
        Input("key-cluster", "data"),
        Input("ranking", "figure"),
        prevent_initial_call=True,
    )
    def ranking_highlight(key, fig):
        """Mark the selected cluster's row in the ranking (the figure is not rebuilt)."""
        if not fig or not fig.get("data"):
            raise PreventUpdate
        shapes = figures.ranking_marks(
            fig["data"][0].get("customdata") or [], parse_search(key).cluster
        )
        if (fig.get("layout") or {}).get("shapes", []) == shapes:
            raise PreventUpdate
        patch = Patch()
        patch["layout"]["shapes"] = shapes
        return patch

    @app.callback(
        Output({"type": "strip", "cluster": ALL}, "className"),
        Input("key-cluster", "data"),
        Input({"type": "strip", "cluster": ALL}, "id"),
    )
    def strip_highlight(key, ids):
        """Mark the selected cluster's strip."""
        selected = parse_search(key).cluster
        return ["strip selected" if i["cluster"] == selected else "strip" for i in ids]

    # Bring a newly opened cluster or image into view once its content has arrived (not on
    # page load: a pasted link opens at the top, with the summary).
    app.clientside_callback(
        """function (search, _cluster, _image, seen) {
            const q = new URLSearchParams(search || "");
            const now = {cluster: q.get("cluster"), image: q.get("image"), pending: null};
            if (!seen) return now;
            const fired = dash_clientside.callback_context.triggered.map(t => t.prop_id);
            now.pending = seen.pending;
            if (fired.includes("url.search")) {
                if (now.image !== null && now.image !== seen.image) now.pending = "image-detail";
                else if (now.cluster !== null && now.cluster !== seen.cluster)
                    now.pending = "cluster-detail";
            }
            if (now.pending && fired.includes(now.pending + ".children")) {
                const target = now.pending;
                setTimeout(() => document.getElementById(target).scrollIntoView(), 0);
                now.pending = null;
            }
            return now;
        }""",
        Output("scroll-memo", "data"),
        Input("url", "search"),
        Input("cluster-detail", "children"),
        Input("image-detail", "children"),
        State("scroll-memo", "data"),
    )

    @app.callback(Output("map", "figure"), Input("key-map", "data"))
    def map_view(key):
        s = parse_search(key)
        try:
            view = _view(catalog, s)
            p = view.filtered_patches(s.filters)
        except InputError as exc:
            return figures.empty(_problem(exc))
        if p.empty:
            return figures.empty(NO_MATCH)
        return figures.embedding_map(p, s.color, int(view.run.manifest["summary"]["n_clusters"]))

    @app.callback(
        Output("map", "figure", allow_duplicate=True),
        Input("key-cluster", "data"),
        Input("map", "figure"),
        prevent_initial_call=True,
    )
    def map_highlight(key, fig):
        if fig is not None and len(fig.get("data") or []) < 2:
            raise PreventUpdate  # a map that says why it is empty
        s = parse_search(key)
        try:
            p = _view(catalog, s).filtered_patches(s.filters)
        except InputError:
            raise PreventUpdate from None
        sel = p[p["cluster"] == s.cluster] if s.cluster is not None else p.iloc[0:0]
        patch = Patch()
        patch["data"][1]["x"] = sel["proj_x"].round(3).tolist()
        patch["data"][1]["y"] = sel["proj_y"].round(3).tolist()
        return patch

    @app.callback(Output("cluster-detail", "children"), Input("key-cluster", "data"))
    @_guarded(1)
    def cluster_view(key):
        s = parse_search(key)
        if s.cluster is None:
            return html.P(
                "Pick a cluster in the ranking or the map to see its patches.", className="hint"
            )
        view = _view(catalog, s)
        p = view.filtered_patches(s.filters)
        p = p[p["cluster"] == s.cluster]
        if p.empty:
            return [
                _close("cluster"),
                html.P(f"Cluster {s.cluster} has no patches under these filters."),
            ]
        names = view.run.names
        clusters = view.clusters(s.filters)
        row = clusters[clusters["cluster"] == s.cluster].iloc[0]
        img = view.images.loc[p["image_id"].unique()]
        n = len(img)
        disagree = int((img["pred_a"] != img["pred_b"]).sum())
        only_a = int((img["outcome"] == "only_a").sum())
        only_b = int((img["outcome"] == "only_b").sum())
        sign = 1 if row["diff"] >= 0 else -1
        gallery = (
            p.assign(_k=sign * p["diff"])
            .sort_values(["_k", "patch_id"], ascending=[False, True])
            .head(GALLERY)
        )
        shown = f"all {len(p)}" if len(gallery) == len(p) else f"showing {len(gallery)} of {len(p)}"
        breakdown = view.cluster_breakdown(s.filters, s.cluster)
        traits = view.cluster_traits(s.filters)
        return [
            _close("cluster"),
            html.H2(f"Cluster {s.cluster} · rank {int(row['rank'])}"),
            html.P(
                className="lead",
                children=[
                    f"{len(p)} patches in {n} images. Mean share of attribution: ",
                    html.Span(f"A {row['attr_a']:.3f}", className="model-a"),
                    ", ",
                    html.Span(f"B {row['attr_b']:.3f}", className="model-b"),
                    f"; B − A = {row['diff']:+.3f} (95% interval {row['diff_lo']:+.3f} "
                    f"to {row['diff_hi']:+.3f}).",
                ],
            ),
            html.P(
                f"The models' predictions differ on {disagree} of these {n} images "
                f"({disagree / n:.0%}); "
                f"only A is right on {only_a}, only B on {only_b}.",
                id="cluster-disagreement",
            ),
            _breakdown(
                breakdown,
                traits.loc[s.cluster] if s.cluster in traits.index else None,
                n,
                "all images passing the filters" if s.filters.active else "all images",
            ),
            html.Div(
                className="two",
                children=[
                    dcc.Graph(
                        figure=figures.share_histogram(p, names),
                        config={"displayModeBar": False},
                        style={"height": f"{figures.DETAIL_HEIGHT}px"},  # no jump when drawn
                    ),
                    dcc.Graph(
                        figure=figures.class_mix(p),
                        config={"displayModeBar": False},
                        style={"height": f"{figures.DETAIL_HEIGHT}px"},
                    ),
                ],
            ),
            html.H3(
                f"Patches in context ({shown}, strongest {'B' if sign > 0 else 'A'} "
                "reliance first)",
                id="gallery-title",
            ),
            html.Div(
                className="gallery",
                children=[
                    html.Button(
                        id={"type": "pick-image", "image": int(r.image_id)},
                        className="patch",
                        n_clicks=0,
                        title=f"image {int(r.image_id)}: A {r.attr_a:.2f}, B {r.attr_b:.2f}",
                        children=[
                            html.Img(
                                src=_files(view, f"patches/{int(r.patch_id)}.jpg"),
                                alt=f"patch {int(r.patch_id)}",
                            ),
                            html.Img(
                                src=_render(view, int(r.image_id), "context", int(r.patch_id)),
                                className="context",
                                alt=f"image {int(r.image_id)}",
                                style=_aspect(view, int(r.image_id)),
                            ),
                            html.Span(
                                f"A {r.attr_a:.2f} · B {r.attr_b:.2f}", className="patch-caption"
                            ),
                        ],
                    )
                    for r in gallery.itertuples()
                ],
            ),
        ]

    @app.callback(Output("image-detail", "children"), Input("key-image", "data"))
    @_guarded(1)
    def image_view(key):
        s = parse_search(key)
        if s.image is None:
            return html.P(
                "Click a patch to see its image with both models' attribution.", className="hint"
            )
        view = _view(catalog, s)
        if s.image not in view.images.index:
            return [_close("image"), html.P(f"Image {s.image} is not in this run.")]
        row = view.images.loc[s.image]
        names, classes = view.run.names, view.run.classes
        pa, pb = view.run.probabilities("a")[s.image], view.run.probabilities("b")[s.image]
        patches = view.patches[view.patches["image_id"] == s.image]

        def pred(role: str, probs: np.ndarray) -> html.Div:
            k = int(row[f"pred_{role}"])
            ok = bool(row[f"correct_{role}"])
            top = np.argsort(-probs)[:3]
            return html.Div(
                className=f"pred model-{role}",
                children=[
                    html.B(f"{role.upper()}: {names[role]}"),
                    html.Span(f" predicts {classes[k]} ({probs[k]:.1%}) ", className="pred-class"),
                    html.Span("✓ right" if ok else "✗ wrong", className="ok" if ok else "bad"),
                    html.Div(
                        " · ".join(f"{classes[int(i)]} {probs[int(i)]:.1%}" for i in top),
                        className="probs",
                    ),
                ],
            )

        panels = [
            ("image", "image, patches outlined"),
            ("a", f"A: {names['a']}"),
            ("b", f"B: {names['b']}"),
            ("diff", "B − A (red: B more, blue: A more)"),
        ]
        scale = overlay_scale(view, s.image)
        top, lim = scale.share_vs_average, scale.diff_vs_average
        bars = {
            "a": _colorbar(INFERNO_CSS, ["0", f"{top / 2:.3g}×", f"≥ {top:.3g}×"]),
            "b": _colorbar(INFERNO_CSS, ["0", f"{top / 2:.3g}×", f"≥ {top:.3g}×"]),
            "diff": _colorbar(DIVERGING_CSS, [f"≤ −{lim:.3g}×", "0", f"≥ +{lim:.3g}×"]),
        }
        return [
            _close("image"),
            html.H2(f"Image {s.image}: {row['image']}"),
            html.P(
                f"label {row['label_name']} · {int(row['width'])}×{int(row['height'])} px",
                className="lead",
            ),
            html.Div(className="preds", children=[pred("a", pa), pred("b", pb)]),
            html.P(
                "Overlays: each model's share of its positive attribution per pixel, as a "
                "multiple of the image's average pixel. A and B share one colour scale; "
                "scales end at the 99th percentile of the image's values, brighter pixels "
                "are clipped.",
                className="hint",
            ),
            html.Div(
                className="panels",
                children=[
                    html.Figure(
                        [
                            html.Img(
                                src=_render(view, s.image, kind),
                                alt=label,
                                className=f"panel-{kind}",
                                style=_aspect(view, s.image),
                            ),
                            html.Figcaption(label),
                            bars.get(kind),
                        ]
                    )
                    for kind, label in panels
                ],
            ),
            html.H3("Its patches"),
            html.Div(
                className="image-patches",
                children=[
                    html.Button(
                        id={"type": "pick-cluster", "cluster": int(p.cluster)},
                        n_clicks=0,
                        className="patch",
                        children=[
                            html.Img(
                                src=_files(view, f"patches/{int(p.patch_id)}.jpg"),
                                alt=f"patch {int(p.patch_id)}",
                            ),
                            html.Span(
                                f"cluster {int(p.cluster)} · A {p.attr_a:.2f} · B {p.attr_b:.2f}",
                                className="patch-caption",
                            ),
                        ],
                    )
                    for p in patches.itertuples()
                ],
            ),
        ]


def _aspect(view: RunView, image_id: int) -> dict[str, str]:
    """An image's shape, so the page keeps its layout while the image loads."""
    row = view.images.loc[image_id]
    return {"aspectRatio": f"{int(row['width'])} / {int(row['height'])}"}


def _stat(label: str, value: str) -> html.Div:
    return html.Div(
        className="stat",
        children=[html.Div(value, className="value"), html.Div(label, className="label")],
    )


def _close(what: str) -> html.Button:
    return html.Button(
        "×", id={"type": "close", "what": what}, n_clicks=0, className="close", title="close"
    )


def _colorbar(stops: tuple[str, ...], ticks: list[str]) -> html.Div:
    """A horizontal colour ramp with evenly spaced tick labels."""
    return html.Div(
        className="colorbar",
        children=[
            html.Div(
                className="ramp",
                style={"background": f"linear-gradient(to right, {', '.join(stops)})"},
            ),
            html.Div(className="ticks", children=[html.Span(t) for t in ticks]),
        ],
    )


def _breakdown(table: pd.DataFrame, top: pd.Series | None, n_images: int, among: str) -> html.Div:
    """What a cluster's images have in common: per column (meta-annotations, each model's
    prediction, the class), its most common values, against their share among ``among``."""
    lead = (
        f"Its images stand out by {_trait(top['column'], top['value'])}: "
        f"{top['share']:.0%} of them, against {top['overall']:.0%} of {among}."
        if top is not None
        else "Nothing sets its images apart from the rest."
    )
    rows = []
    for column, group in table.groupby("column", sort=False):
        for i, r in enumerate(group.head(BREAKDOWN_VALUES).itertuples()):
            strong = top is not None and column == top["column"] and r.value == top["value"]
            rows.append(
                html.Tr(
                    className="stands-out" if strong else None,
                    children=[
                        html.Td(column if i == 0 else "", className="col"),
                        html.Td(r.value),
                        html.Td(
                            className="share",
                            children=[
                                html.Span(
                                    className="share-bar",
                                    style={"width": f"{80 * r.share:.0f}px"},
                                ),
                                html.Span(f"{r.share:.0%}"),
                            ],
                        ),
                        html.Td(f"{r.overall:.0%}", className="overall"),
                    ],
                )
            )
    return html.Div(
        id="cluster-breakdown",
        children=[
            html.H3("What its images have in common"),
            html.P(lead, className="lead"),
            html.Table(
                className="breakdown",
                children=[
                    html.Thead(
                        html.Tr(
                            [
                                html.Th(""),
                                html.Th(""),
                                html.Th(f"of its {n_images} images"),
                                html.Th(f"of {among}"),
                            ]
                        )
                    ),
                    html.Tbody(rows),
                ],
            ),
        ],
    )
