"""Callbacks. One callback owns the URL (the view state); renderers hang off small keys
derived from it, each set only when its part of the state changed, so a click re-renders
only what it affects (the 100k-point map is not resent when a cluster is picked)."""

from __future__ import annotations

import functools
import re
from urllib.parse import quote

import numpy as np
from dash import ALL, Dash, Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from imacs.errors import InputError

from . import figures
from .reader import RunCatalog
from .state import ViewState, parse_search

GALLERY = 24


def _view(catalog: RunCatalog, state: ViewState):
    try:
        return catalog.get(state.run)
    except InputError:
        return catalog.get(None)


def _ranking_labels(fig: dict | None) -> list[str]:
    data = (fig or {}).get("data") or []
    return list(data[0].get("y") or []) if data else []


def _files(view, sub: str) -> str:
    return f"/files/{quote(view.run_id)}/thumbs/{sub}"


def _render(view, image_id: int, kind: str, patch: int | None = None) -> str:
    q = f"?patch={patch}" if patch is not None else ""
    return f"/render/{quote(view.run_id)}/{image_id}/{kind}.png{q}"


def _guarded(n_outputs: int):
    """Show a run's read error (a truncated table, a missing file) in the first output
    instead of failing the callback; the other outputs keep what they showed."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            try:
                return fn(*args)
            except InputError as exc:
                msg = html.Div(f"This run cannot be shown: {exc}", className="error")
                return msg if n_outputs == 1 else (msg, *([no_update] * (n_outputs - 1)))

        return inner

    return wrap


_RANK_LABEL = re.compile(r"· c(\d+)$")


def _clicked_cluster(click: dict | None) -> int | None:
    """The cluster a click on the ranking or the map names: its customdata, else the
    ranking bar's label ``#rank · cK`` (clickData omits typed-array customdata)."""
    points = (click or {}).get("points") or []
    if not points:
        return None
    point = points[0]
    custom = point.get("customdata")
    if isinstance(custom, list):
        custom = custom[0] if custom else None
    if isinstance(custom, int | float) and not isinstance(custom, bool):
        return int(custom)
    m = _RANK_LABEL.search(str(point.get("y", "")))
    return int(m.group(1)) if m else None


def register(app: Dash, catalog: RunCatalog) -> None:
    def _options(view):
        runs = [{"label": r, "value": r} for r in catalog.newest_first()]
        classes = [{"label": c, "value": c} for c in view.run.classes]
        meta = [{"label": f"{k} = {v}", "value": f"{k}={v}"} for k, v in view.meta_options]
        return runs, classes, meta

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
        Input("url", "search"),
        Input("run-picker", "value"),
        Input("f-class", "value"),
        Input("f-outcome", "value"),
        Input("f-meta", "value"),
        Input("map-color", "value"),
        Input("ranking", "clickData"),
        Input("map", "clickData"),
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
        keep = (no_update,) * 8
        if trig is None or trig == "url":
            try:
                view = catalog.get(s.run)
            except InputError:
                view = catalog.get(None)
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
            )
        if s.run is None:
            s = s.with_(run=catalog.get(None).run_id)
        value = ctx.triggered[0]["value"] if ctx.triggered else None
        if trig == "run-picker":
            if not run or run == s.run:
                raise PreventUpdate
            view = catalog.get(run)
            runs, class_opts, meta_opts = _options(view)
            s = ViewState(run=view.run_id, color=s.color)
            return s.to_search(), runs, no_update, class_opts, [], None, meta_opts, [], no_update
        if trig in ("f-class", "f-outcome", "f-meta"):
            pairs = tuple(tuple(m.split("=", 1)) for m in (meta or []) if "=" in m)
            s = s.with_(
                classes=tuple(classes or ()), outcome=outcome or None, meta=pairs, image=None
            )
        elif trig == "map-color":
            s = s.with_(color=colour or "cluster")
        elif trig in ("ranking", "map"):
            click = rank_click if trig == "ranking" else map_click
            cluster = _clicked_cluster(click)
            if cluster is None:
                raise PreventUpdate
            s = s.with_(cluster=cluster, image=None)
        elif isinstance(trig, dict) and value:  # a button; None/0 when it was just rendered
            if trig["type"] == "pick-cluster":
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
        return (new, *keep)

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
    @_guarded(5)
    def data_views(key):
        s = parse_search(key)
        view = _view(catalog, s)
        m, summ = view.run.manifest, view.run.manifest["summary"]
        names = view.run.names
        f = s.filters
        clusters = view.clusters(f)
        n_img = int(view.image_mask(f).sum())
        settings = m["settings"]
        ig = settings["attribution"]
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
                    _stat("accuracy A", f"{summ['accuracy_a']:.1%}"),
                    _stat("accuracy B", f"{summ['accuracy_b']:.1%}"),
                    _stat("agreement", f"{summ['agreement']:.1%}"),
                    _stat(
                        "images",
                        f"{n_img} / {summ['n_images']}" if f.active else str(summ["n_images"]),
                    ),
                    _stat("skipped", str(summ["n_skipped"])),
                    _stat("patches", str(summ["n_patches"])),
                    _stat("clusters", str(summ["n_clusters"])),
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
                figures.ranking(clusters, names, None),
                [html.P("No patches match these filters.", className="empty")],
            )
        strips = [
            html.Button(
                id={"type": "pick-cluster", "cluster": int(r.cluster)},
                className="strip",
                n_clicks=0,
                children=[
                    html.Div(
                        className="strip-head",
                        children=[
                            html.Span(
                                f"#{int(r.rank)} cluster {int(r.cluster)}", className="strip-title"
                            ),
                            html.Span(
                                f"B − A {r.diff:+.3f}", className="pos" if r.diff >= 0 else "neg"
                            ),
                            html.Span(
                                f"{int(r.n_patches)} patches · {int(r.n_images)} images"
                                f" · mostly {r.top_class}"
                            ),
                        ],
                    ),
                    html.Div(
                        className="thumbs",
                        children=[
                            html.Img(
                                src=_files(view, f"patches/{pid}.jpg"),
                                alt=f"patch {pid}",
                            )
                            for pid in view.representatives.get(int(r.cluster), [])
                        ],
                    ),
                ],
            )
            for r in clusters.itertuples()
        ]
        return (
            summary,
            dl_c,
            dl_p,
            figures.ranking(clusters, names, None),
            strips,
        )

    @app.callback(Output("map", "figure"), Input("key-map", "data"))
    def map_view(key):
        s = parse_search(key)
        try:
            view = _view(catalog, s)
            p = view.filtered_patches(s.filters)
        except InputError:
            return figures.empty("this run's patches cannot be read")
        return figures.embedding_map(p, s.color, int(view.run.manifest["summary"]["n_clusters"]))

    @app.callback(
        Output("map", "figure", allow_duplicate=True),
        Input("key-cluster", "data"),
        Input("map", "figure"),
        prevent_initial_call=True,
    )
    def map_highlight(key, _fig):
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

    @app.callback(
        Output("ranking", "figure", allow_duplicate=True),
        Output({"type": "pick-cluster", "cluster": ALL}, "className"),
        Input("key-cluster", "data"),
        Input("ranking", "figure"),
        State({"type": "pick-cluster", "cluster": ALL}, "id"),
        prevent_initial_call=True,
    )
    def ranking_highlight(key, fig, strip_ids):
        """Mark the selected cluster in the ranking (a band on its row) and its strip."""
        s = parse_search(key)
        shown = [_clicked_cluster({"points": [{"y": y}]}) for y in _ranking_labels(fig)]
        patch = Patch()
        patch["layout"]["shapes"] = figures.ranking_highlight(shown, s.cluster)
        classes = ["strip selected" if i["cluster"] == s.cluster else "strip" for i in strip_ids]
        return patch, classes

    app.clientside_callback(  # once a picked cluster's detail is drawn, bring it into view
        """function(children, key) {
            if (key && key.includes("cluster=")) {
                const el = document.getElementById("cluster-detail");
                if (el) { el.scrollIntoView({block: "start"}); }
            }
            return window.dash_clientside.no_update;
        }""",
        Output("cluster-detail", "className"),
        Input("cluster-detail", "children"),
        State("key-cluster", "data"),
        prevent_initial_call=True,
    )

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
            html.Div(
                className="two",
                children=[
                    dcc.Graph(
                        figure=figures.share_histogram(p, names), config={"displayModeBar": False}
                    ),
                    dcc.Graph(figure=figures.class_mix(p), config={"displayModeBar": False}),
                ],
            ),
            html.H3(f"Patches in context (strongest {'B' if sign > 0 else 'A'} reliance first)"),
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
        return [
            _close("image"),
            html.H2(f"Image {s.image}: {row['image']}"),
            html.P(
                f"label {row['label_name']} · {int(row['width'])}×{int(row['height'])} px",
                className="lead",
            ),
            html.Div(className="preds", children=[pred("a", pa), pred("b", pb)]),
            html.P(
                "A and B overlays share one colour scale "
                "(share of each model's positive attribution).",
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
                            ),
                            html.Figcaption(label),
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


def _stat(label: str, value: str) -> html.Div:
    return html.Div(
        className="stat",
        children=[html.Div(value, className="value"), html.Div(label, className="label")],
    )


def _close(what: str) -> html.Button:
    return html.Button(
        "×", id={"type": "close", "what": what}, n_clicks=0, className="close", title="close"
    )
