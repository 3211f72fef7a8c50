"""The page's components. Each module renders a part of the page, owns the ids it renders
(an ``ids`` namespace; other modules import them, never retype them), declares its parts of
the view state, its clicks and the controls that show the state (see
:class:`imacs_app.declare.Component`), and registers the callbacks that fill it. They talk
only through the URL (see :mod:`.navigation`).

A new view is one module here and one entry in :data:`COMPONENTS`:

- ``ids``: a class of its ids (strings; pattern-matching ids as static constructors);
- ``layout()``: its elements by page region (``{"details": [section]}``, see
  :data:`imacs_app.layout.REGIONS`);
- ``URL_KEYS``: its parts of the view state (:class:`imacs_app.declare.UrlKey`; helpers
  ``choice_key`` and ``integer_key``), read back as ``state.<field>``;
- ``CLICKS``: ``Click(ids.BUTTON, lambda s, hit: s.with_(field=...))`` per thing to click;
- ``MIRRORS`` and ``OPENS`` if a control shows the state or a click should scroll to it;
- ``register(app, catalog, fmt)``: its callbacks, which listen to a derived key of
  :mod:`.navigation` (``Input(navigation.ids.KEY_DATA, "data")``) and read the state with
  ``fmt.parse(key)``.

The state callback, the view state and the layout follow; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from dash import Dash

from ..catalog import RunCatalog
from ..declare import UrlFormat
from . import (
    agreement,
    cluster,
    filters,
    image,
    inside,
    navigation,
    overview,
    patch_map,
    query,
    versus,
)

#: the page's components, in page order (within each region of :mod:`imacs_app.layout`)
COMPONENTS = (
    *(navigation, overview, filters, query, versus, patch_map, cluster, inside, image, agreement),
)


def register(
    app: Dash, catalog: RunCatalog, components: Sequence[object] = COMPONENTS
) -> navigation.Router:
    """Register every component's callbacks and the state callback assembled from their
    declarations; returns the state callback's router."""
    fmt = UrlFormat.of(components)
    for component in components:
        own = getattr(component, "register", None)  # none: only declarations
        if own is not None:
            own(app, catalog, fmt)
    return navigation.register_navigation(app, catalog, components, fmt)
