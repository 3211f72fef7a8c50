"""What every component shares: the run of a view state, file and rendering URLs, the one
wording for a run that cannot be shown, and small page elements."""

from __future__ import annotations

import functools
from urllib.parse import quote

from dash import html, no_update

from imacs.errors import InputError

from ..catalog import RunCatalog
from ..reader import RunView
from ..state import ViewState

#: what every view says when the filters leave nothing
NO_MATCH = "No patches match these filters."


def view_of(catalog: RunCatalog, state: ViewState) -> RunView:
    """The state's run at the state's level (concepts or clusters); InputError (shown by
    :func:`guarded`) if it is gone."""
    return catalog.get(state.run).at(state.level)


def files_url(view, sub: str) -> str:
    return f"/files/{quote(view.run_id)}/thumbs/{sub}"


def render_url(view, image_id: int, kind: str, patch: int | None = None) -> str:
    """The URL of an image's rendering (see :func:`imacs_app.render.render_png`)."""
    q = f"?patch={patch}" if patch is not None else ""
    return f"/render/{quote(view.run_id)}/{image_id}/{kind}.png{q}"


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


def close_button(what: str) -> html.Button:
    return html.Button(
        "×", id={"type": "close", "what": what}, n_clicks=0, className="close", title="close"
    )


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
