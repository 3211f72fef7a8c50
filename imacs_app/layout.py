"""The page: header and filters, cluster ranking, embedding map, cluster and image detail;
each part comes from its component."""

from __future__ import annotations

from dash import html

from .components import agreement, cluster, image, navigation, overview, patch_map


def layout() -> html.Div:
    return html.Div(
        className="page",
        children=[
            *navigation.stores(),
            *navigation.header(),
            overview.summary(),
            navigation.filters(),
            html.Main(className="grid", children=[overview.ranking_card(), patch_map.map_card()]),
            cluster.section(),
            image.section(),
            agreement.section(),
        ],
    )
