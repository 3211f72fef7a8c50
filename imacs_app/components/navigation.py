"""Navigation: the URL holds the view state (run, filters, selected cluster and image);
the run picker, the filters and every click rewrite it, and small keys derived from it
tell each view when its part changed, so a click re-renders only what it affects (the
100k-point map is not resent when a cluster is picked)."""

from __future__ import annotations

import re
import time

import numpy as np
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from imacs.errors import InputError

from ..catalog import RunCatalog
from ..reader import OUTCOMES, RunView
from ..state import ViewState, parse_search
from .common import problem, view_of


def stores() -> list:
    """The URL and the keys derived from it."""
    return [
        dcc.Location(id="url", refresh=False),
        dcc.Store(id="key-data"),
        dcc.Store(id="key-map"),
        dcc.Store(id="key-cluster"),
        dcc.Store(id="key-image"),
        dcc.Store(id="scroll-memo"),
    ]


def header() -> list:
    """The title, the run picker and the notice line."""
    return [
        html.Header(
            className="top",
            children=[
                html.Div(
                    [
                        html.H1("imacs"),
                        html.Span("where do two models look differently?", className="tag"),
                    ]
                ),
                dcc.Dropdown(
                    id="run-picker",
                    clearable=False,
                    placeholder="choose a run",
                    className="run-picker",
                ),
            ],
        ),
        html.Div(id="notice", role="alert"),
    ]


def filters() -> html.Section:
    """Class, outcome and meta-annotation filters, and the CSV downloads."""
    return html.Section(
        className="filters",
        children=[
            dcc.Dropdown(id="f-class", multi=True, placeholder="all classes"),
            dcc.Dropdown(
                id="f-outcome",
                options=[{"label": v, "value": k} for k, v in OUTCOMES.items()],
                placeholder="any outcome",
            ),
            dcc.Dropdown(id="f-meta", multi=True, placeholder="meta-annotations"),
            html.Div(
                className="downloads",
                children=[
                    html.A("concepts.csv", id="dl-concepts", className="button", href=""),
                    html.A("clusters.csv", id="dl-clusters", className="button", href=""),
                    html.A("patches.csv", id="dl-patches", className="button", href=""),
                ],
            ),
        ],
    )


_RANK_LABEL = re.compile(r"c(-?\d+)$")


def clicked_cluster(click: dict | None, source: str, s: ViewState, catalog: RunCatalog) -> int:
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
        patches = view_of(catalog, s).filtered_patches(s.filters)
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


def _run_label(rid: str, path) -> str:
    try:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime((path / "run.json").stat().st_mtime))
    except OSError:
        return rid
    return f"{rid} · {made}"


def register(app: Dash, catalog: RunCatalog) -> None:
    """The state callback, the keys and scrolling to what was just opened."""

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
            notice = problem(exc)
            try:
                view = catalog.get(None)
            except InputError as none_left:
                runs, _, _ = _options(None)
                msg = html.Div(problem(none_left), className="error")
                return (
                    no_update, runs, None, [], [], None, [], [], s.color, s.measure, s.level,
                    msg,
                )  # fmt: skip
            notice = f"{notice}. Showing the newest run, {view.run_id}, instead."
            s = ViewState(color=s.color, measure=s.measure, level=s.level)
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
            s.measure,
            s.level,
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
        Output("rank-measure", "value"),
        Output("rank-level", "value"),
        Output("notice", "children"),
        Input("url", "search"),
        Input("run-picker", "value"),
        Input("f-class", "value"),
        Input("f-outcome", "value"),
        Input("f-meta", "value"),
        Input("map-color", "value"),
        Input("rank-measure", "value"),
        Input("rank-level", "value"),
        Input("ranking", "clickData"),
        Input("map", "clickData"),
        Input({"type": "strip", "cluster": ALL}, "n_clicks"),
        Input({"type": "pick-cluster", "cluster": ALL}, "n_clicks"),
        Input({"type": "pick-image", "image": ALL}, "n_clicks"),
        Input({"type": "agree-image", "image": ALL}, "n_clicks"),
        Input({"type": "close", "what": ALL}, "n_clicks"),
        Input({"type": "open", "level": ALL, "id": ALL}, "n_clicks"),
    )
    def state(
        search, run, classes, outcome, meta, colour, measure, level, rank_click, map_click,
        *_clicks,
    ):  # fmt: skip
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
            return _load(
                ViewState(run=run, color=s.color, measure=s.measure, level=s.level), search
            )
        if trig in ("f-class", "f-outcome", "f-meta"):
            pairs = tuple(tuple(m.split("=", 1)) for m in (meta or []) if "=" in m)
            s = s.with_(
                classes=tuple(classes or ()), outcome=outcome or None, meta=pairs, image=None
            )
        elif trig == "rank-measure":
            s = s.with_(measure=measure or "share")
        elif trig == "rank-level":
            if (level or "concept") == s.level:
                raise PreventUpdate
            s = s.with_(level=level or "concept", cluster=None, image=None)
        elif trig == "map-color":
            s = s.with_(color=colour or "cluster")
        elif trig in ("ranking", "map"):
            click = rank_click if trig == "ranking" else map_click
            s = s.with_(cluster=clicked_cluster(click, trig, s, catalog), image=None)
        elif isinstance(trig, dict) and value:  # a button; None/0 when it was just rendered
            if trig["type"] in ("strip", "pick-cluster"):
                s = s.with_(cluster=int(trig["cluster"]), image=None)
            elif trig["type"] in ("pick-image", "agree-image"):
                s = s.with_(image=int(trig["image"]))
            elif trig["type"] == "close":
                s = s.with_(**{trig["what"]: None})
            elif trig["type"] == "open":  # a concept's cluster, or a cluster's concept
                s = s.with_(level=trig["level"], cluster=int(trig["id"]), image=None)
        else:
            raise PreventUpdate
        new = s.to_search()
        if new == (search or ""):
            raise PreventUpdate
        # the level toggle follows a click that changed the level (a concept's cluster)
        return (new, *(no_update,) * 9, s.level, None)

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

    # Bring a newly opened cluster or image into view once its content has arrived (not on
    # page load: a pasted link opens at the top, with the summary).
    app.clientside_callback(
        """function (search, _cluster, _image, seen) {
            const q = new URLSearchParams(search || "");
            const group = q.get("concept") !== null ? "k" + q.get("concept") : q.get("cluster");
            const now = {cluster: group, image: q.get("image"), pending: null};
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
