"""What every component shares: the run of a view state, file and rendering URLs, the one
wording for a run that cannot be shown, the cluster a clicked ranking bar or map point
stands for, and small page elements."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import numpy as np
from dash import html, no_update
from dash.exceptions import PreventUpdate

from imacs.errors import InputError

from .. import figures
from ..catalog import RunCatalog
from ..declare import Hit, ViewState
from ..reader import RunView

#: what every view says when the filters leave nothing
NO_MATCH = "No patches match these filters."


def view_of(catalog: RunCatalog, state: ViewState) -> RunView:
    """The state's run at the state's level (concepts or clusters); InputError (shown by
    :func:`guarded`) if it is gone."""
    return catalog.get(state.run).at(state.level)


def files_url(view, sub: str) -> str:
    """The URL of a thumbnail of the view's run (as read: ``v``, its token)."""
    return f"/files/{quote(view.run_id)}/thumbs/{sub}?v={view.run.token}"


def render_url(view, image_id: int, kind: str, patch: int | None = None) -> str:
    """The URL of an image's rendering (see :func:`imacs_app.render.render_png`) of the
    view's run as read (``v``, its token)."""
    q = f"&patch={patch}" if patch is not None else ""
    return f"/render/{quote(view.run_id)}/{image_id}/{kind}.png?v={view.run.token}{q}"


def problem(exc: Exception | str) -> str:
    """The one wording for a run that cannot be shown, wherever it is shown."""
    return f"This run cannot be shown: {exc}"


def guarded(n_outputs: int, blank: tuple = ()):
    """Show a run's read error (a truncated table, a missing file, a run removed while the
    page was open) in the first output instead of failing the callback; the other outputs
    are set to ``blank`` (default: they keep what they showed)."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            try:
                return fn(*args)
            except InputError as exc:
                msg = html.Div(problem(exc), className="error")
                rest = blank or (no_update,) * (n_outputs - 1)
                return msg if n_outputs == 1 else (msg, *rest)

        return inner

    return wrap


def pct(x: float) -> str:
    return "–" if x != x else f"{x:.1%}"  # NaN: no image passes the filters


def aspect(view: RunView, image_id: int) -> dict[str, str]:
    """An image's shape, so the page keeps its layout while the image loads."""
    row = view.images.loc[image_id]
    return {"aspectRatio": f"{int(row['width'])} / {int(row['height'])}"}


def stat(label: str, value: str) -> html.Div:
    return html.Div(
        className="stat",
        children=[html.Div(value, className="value"), html.Div(label, className="label")],
    )


class ids:
    """The ids of the shared elements (Dash's namespace convention for a component's ids)."""

    @staticmethod
    def close(what: Any) -> dict:
        """A detail's close button; ``what`` is the part of the view state it clears."""
        return {"type": "close", "what": what}


def close_button(what: str) -> html.Button:
    """The × that closes a detail (a click declared by the detail's component clears
    ``what`` from the view state)."""
    return html.Button("×", id=ids.close(what), n_clicks=0, className="close", title="close")


def colorbar(stops: tuple[str, ...], ticks: list[str]) -> html.Div:
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


def open_clicked(source: str) -> Callable[[ViewState, Hit], ViewState]:
    """What a click on a ranking bar (``source`` "ranking") or a map point ("map") does:
    open its cluster (see :func:`clicked_cluster`)."""

    def apply(s: ViewState, hit: Hit) -> ViewState:
        return s.with_(cluster=clicked_cluster(hit.value, source, s, hit.catalog), image=None)

    return apply


_RANK_LABEL = re.compile(r"c(-?\d+)$")


def clicked_cluster(click: dict | None, source: str, s: ViewState, catalog: RunCatalog) -> int:
    """The cluster of a clicked ranking bar (``source`` "ranking") or map point ("map").

    Reads the point's ``customdata`` when the click carries it. Dash leaves it out when
    the figure sent it as a typed array (plotly does so for numpy arrays, as for the map's
    100k points), so the fallbacks use what every click carries: the bar's category label
    ("#2 · c5"), or the map point's index in the filtered patch table, checked against
    its coordinates (the nearest patch wins if the map was redrawn in between).

    Raises:
        PreventUpdate: the click names no cluster.
    """
    points = (click or {}).get("points") or []
    if not points:
        raise PreventUpdate
    pt = points[0]
    custom = _customdata(pt)
    if custom is not None:
        return custom
    if source == "ranking":
        found = _RANK_LABEL.search(str(pt.get("y", pt.get("label", ""))))
        if found:
            return int(found.group(1))
        raise PreventUpdate
    return _map_point(pt, s, catalog)


def _customdata(pt: dict) -> int | None:
    custom = pt.get("customdata")
    if isinstance(custom, list):
        custom = custom[0] if custom else None
    try:
        return None if custom is None else int(custom)
    except (TypeError, ValueError):
        return None


def _map_point(pt: dict, s: ViewState, catalog: RunCatalog) -> int:
    """A map point's cluster: its trace's group (:func:`imacs_app.figures.map_groups`), or
    the patch at its index in a trace of every point, if the coordinates agree; else the
    nearest patch (the map was redrawn in between)."""
    try:
        view = view_of(catalog, s)
        patches = view.filtered_patches(s.filters)
    except InputError:
        raise PreventUpdate from None
    groups = figures.map_groups(patches, s.color, view.groups["cluster"].tolist())
    curve = pt.get("curveNumber", 0)
    if curve == len(groups) and s.cluster is not None:
        return s.cluster  # the outline of the selected cluster's points
    x, y = pt.get("x"), pt.get("y")
    index = pt.get("pointIndex", pt.get("pointNumber"))
    if isinstance(curve, int) and 0 <= curve < len(groups):
        g = groups[curve]
        sub = patches if g is None else patches[patches["cluster"] == g]
        at_index = _at_index(index, x, y, sub)
        if at_index is not None:
            return at_index
    if x is None or y is None or patches.empty:
        raise PreventUpdate
    near = (patches["proj_x"] - x) ** 2 + (patches["proj_y"] - y) ** 2
    return int(patches["cluster"].to_numpy()[int(np.argmin(near.to_numpy()))])


def _at_index(index: object, x: float | None, y: float | None, patches) -> int | None:
    """The cluster of the patch at a map point's index, if the point's coordinates (when
    the click has them) are that patch's; else None."""
    if not isinstance(index, int) or not 0 <= index < len(patches):
        return None
    row = patches.iloc[index]
    if x is None or y is None:
        return int(row["cluster"])
    same = abs(round(row["proj_x"], 3) - x) < 1e-6 and abs(round(row["proj_y"], 3) - y) < 1e-6
    return int(row["cluster"]) if same else None
