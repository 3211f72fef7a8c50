"""The patch map: every patch at its 2-D projection, coloured by concept or cluster (as the
ranking shows them) or by B − A; the selected group's points are outlined without
resending the map."""

from __future__ import annotations

from dash import Dash, Input, Output, Patch, dcc, html
from dash.exceptions import PreventUpdate

from imacs.errors import InputError

from .. import figures
from ..catalog import RunCatalog
from ..declare import Click, Mirror, UrlFormat, choice_key
from . import navigation
from .common import NO_MATCH, open_clicked, problem, view_of


class ids:
    """The ids the map renders (Dash's namespace convention for a component's ids)."""

    COLOR = "map-color"
    MAP = "map"
    #: which trace of the drawn map outlines the selection (0: a map that says why it is
    #: empty), so the outline is updated without the browser posting the map back
    DRAWN = "map-drawn"


#: ``color=diff`` colours the map by B − A; a display choice, kept when another run is
#: opened, that only the map depends on
URL_KEYS = (choice_key("color", ("cluster", "diff"), position=80, scope="map", per_run=False),)
CLICKS = (
    Click(ids.COLOR, lambda s, hit: s.with_(color=hit.value or "cluster"), prop="value"),
    Click(ids.MAP, open_clicked("map"), prop="clickData"),
)
MIRRORS = (Mirror(ids.COLOR, "value", lambda s, view, catalog: s.color),)


def layout() -> dict[str, list]:
    """The map card, beside the ranking."""
    return {"grid": [map_card()]}


def map_card() -> html.Section:
    return html.Section(
        className="card map-card",
        children=[
            html.H2("Patch map"),
            dcc.Store(id=ids.DRAWN),
            dcc.RadioItems(
                id=ids.COLOR,
                options=[
                    {"label": "colour by concept / cluster (as ranked)", "value": "cluster"},
                    {"label": "colour by B − A", "value": "diff"},
                ],
                value="cluster",
                inline=True,
            ),
            html.Div(
                "Click a point to open its group; in the legend, click an entry to hide "
                "its points, double-click to show them alone.",
                className="hint",
            ),
            dcc.Loading(
                dcc.Graph(
                    id=ids.MAP,
                    className="map-graph",
                    config={"displaylogo": False},
                    responsive=True,
                ),
                parent_className="map-fill",
            ),
        ],
    )


def register(app: Dash, catalog: RunCatalog, fmt: UrlFormat) -> None:
    """Draw the map; outline the selected cluster."""

    @app.callback(
        Output(ids.MAP, "figure"),
        Output(ids.DRAWN, "data"),
        Input(navigation.ids.KEY_MAP, "data"),
    )
    def map_view(key):
        s = fmt.parse(key)
        try:
            view = view_of(catalog, s)
            p = view.filtered_patches(s.filters)
        except InputError as exc:
            return figures.empty(problem(exc)), 0
        if p.empty:
            return figures.empty(NO_MATCH), 0
        order = view.groups["cluster"].tolist()
        shown = figures.map_sample(p)  # above MAP_POINTS, a sample of every group
        fig = figures.embedding_map(shown, s.color, len(view.groups), view.unit, order, len(p))
        return fig, len(figures.map_groups(shown, s.color, order))

    @app.callback(
        Output(ids.MAP, "figure", allow_duplicate=True),
        Input(navigation.ids.KEY_CLUSTER, "data"),
        Input(ids.DRAWN, "data"),
        prevent_initial_call=True,
    )
    def map_highlight(key, drawn):
        if not drawn:
            raise PreventUpdate  # not drawn yet, or a map that says why it is empty
        s = fmt.parse(key)
        try:
            p = view_of(catalog, s).filtered_patches(s.filters)
        except InputError:
            raise PreventUpdate from None
        sel = p[p["cluster"] == s.cluster] if s.cluster is not None else p.iloc[0:0]
        patch = Patch()
        patch["data"][drawn]["x"] = sel["proj_x"].round(3).tolist()
        patch["data"][drawn]["y"] = sel["proj_y"].round(3).tolist()
        return patch
