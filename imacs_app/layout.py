"""The page: header and filters, the ranking beside the embedding map, then the details;
each part comes from its component (:data:`imacs_app.components.COMPONENTS`)."""

from __future__ import annotations

from collections.abc import Sequence

from dash import html

from .components import COMPONENTS

#: the page's regions, top to bottom: each component's ``layout()`` places its parts in
#: them, and within a region parts follow the components' order
REGIONS = ("top", "grid", "details")


def layout(components: Sequence[object] = COMPONENTS) -> html.Div:
    """The page made of ``components`` (default: the dashboard's)."""
    parts: dict[str, list] = {region: [] for region in REGIONS}
    for component in components:
        for region, elements in component.layout().items():  # type: ignore[attr-defined]
            if region not in parts:
                raise ValueError(f"{component}: no page region {region!r}; use one of {REGIONS}")
            parts[region].extend(elements)
    return html.Div(
        className="page",
        children=[
            *parts["top"],
            html.Main(className="grid", children=parts["grid"]),
            *parts["details"],
        ],
    )
