"""The page's components. Each module holds a part of the layout and the callbacks that
fill it; they talk only through the URL (see :mod:`.navigation`)."""

from __future__ import annotations

from dash import Dash

from ..catalog import RunCatalog
from . import agreement, cluster, image, navigation, overview, patch_map

COMPONENTS = (navigation, overview, patch_map, agreement, cluster, image)


def register(app: Dash, catalog: RunCatalog) -> None:
    """Register every component's callbacks."""
    for component in COMPONENTS:
        component.register(app, catalog)
