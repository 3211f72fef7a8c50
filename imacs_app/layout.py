"""The page: header and filters, cluster ranking, embedding map, cluster and image detail."""

from __future__ import annotations

from dash import dcc, html

from .reader import OUTCOMES


def layout() -> html.Div:
    return html.Div(
        className="page",
        children=[
            dcc.Location(id="url", refresh=False),
            dcc.Store(id="key-data"),
            dcc.Store(id="key-map"),
            dcc.Store(id="key-cluster"),
            dcc.Store(id="key-image"),
            dcc.Store(id="scroll-memo"),
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
            html.Section(id="summary", className="summary"),
            html.Section(
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
                            html.A("clusters.csv", id="dl-clusters", className="button", href=""),
                            html.A("patches.csv", id="dl-patches", className="button", href=""),
                        ],
                    ),
                ],
            ),
            html.Main(
                className="grid",
                children=[
                    html.Section(
                        className="card",
                        children=[
                            html.H2("Clusters, ranked by |B − A|"),
                            html.P(
                                "Each cluster groups similar-looking salient patches. "
                                "Bars show the mean share of each model's attribution inside them; "
                                "click a bar or a row to open the cluster.",
                                className="hint",
                            ),
                            dcc.Loading(dcc.Graph(id="ranking", config={"displayModeBar": False})),
                            html.Div(id="strips", className="strips"),
                        ],
                    ),
                    html.Section(
                        className="card map-card",
                        children=[
                            html.H2("Patch map"),
                            dcc.RadioItems(
                                id="map-color",
                                options=[
                                    {"label": "colour by cluster", "value": "cluster"},
                                    {"label": "colour by B − A", "value": "diff"},
                                ],
                                value="cluster",
                                inline=True,
                            ),
                            dcc.Loading(
                                dcc.Graph(
                                    id="map",
                                    className="map-graph",
                                    config={"displaylogo": False},
                                    responsive=True,
                                ),
                                parent_className="map-fill",
                            ),
                        ],
                    ),
                ],
            ),
            html.Section(id="cluster-detail", className="card detail"),
            html.Section(id="image-detail", className="card detail"),
        ],
    )
