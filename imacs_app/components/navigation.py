"""Navigation: the URL holds the view state; the run picker, the controls and every click
rewrite it, and small keys derived from it tell each view when its part changed, so a click
re-renders only what it affects (the 100k-point map is not resent when a cluster is picked).

The state callback (:class:`Router`) is assembled from what the components declare (see
:class:`imacs_app.declare.Component`): their URL keys make the state, their clicks are its
inputs, their mirrors its outputs. A new clickable view is one component module and one
entry in :data:`imacs_app.components.COMPONENTS`; nothing here changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from imacs.errors import InputError

from ..catalog import NoSuchRun, RunCatalog
from ..declare import (
    Click,
    Hit,
    Mirror,
    UrlFormat,
    UrlKey,
    ViewState,
    declared,
    first,
)
from ..reader import RunView
from .common import problem


class ids:
    """The ids navigation renders (Dash's namespace convention for a component's ids)."""

    URL = "url"
    #: derived keys: the state's parts each kind of view depends on (see :data:`KEYS`)
    KEY_DATA = "key-data"
    KEY_MAP = "key-map"
    KEY_CLUSTER = "key-cluster"
    KEY_IMAGE = "key-image"
    SCROLL = "scroll-memo"
    RUN_PICKER = "run-picker"
    NOTICE = "notice"


#: each derived key and the scopes of the URL keys it carries (see :data:`imacs_app.declare.SCOPES`)
KEYS = {
    ids.KEY_DATA: ("data",),
    ids.KEY_MAP: ("data", "map"),
    ids.KEY_CLUSTER: ("data", "cluster"),
    ids.KEY_IMAGE: ("data", "cluster", "image"),
}


def _open_run(s: ViewState, hit: Hit) -> ViewState:
    """The run picker opens another run, with the same display choices."""
    if not hit.value or hit.value == s.run:
        raise PreventUpdate
    return s.display_only().with_(run=hit.value)


def _run_label(rid: str, path: Path) -> str:
    try:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime((path / "run.json").stat().st_mtime))
    except OSError:
        return rid
    return f"{rid} · {made}"


def _run_options(s: ViewState, view: RunView | None, catalog: RunCatalog) -> list[dict]:
    return [{"label": _run_label(r, d), "value": r} for r, d in catalog.run_dirs().items()]


URL_KEYS = (
    UrlKey(
        "run",
        None,
        read=lambda q: first(q, "run"),
        write=lambda s: [] if s.run is None else [("run", s.run)],
        names=("run",),
        position=10,
    ),
)
CLICKS = (Click(ids.RUN_PICKER, _open_run, prop="value"),)
MIRRORS = (
    Mirror(ids.RUN_PICKER, "options", _run_options),
    Mirror(ids.RUN_PICKER, "value", lambda s, view, catalog: s.run),
)


def layout() -> dict[str, list]:
    """The URL, the keys derived from it, the title, the run picker and the notice line."""
    header = html.Header(
        className="top",
        children=[
            html.Div(
                [
                    html.H1("imacs"),
                    html.Span("where do two models look differently?", className="tag"),
                ]
            ),
            dcc.Dropdown(
                id=ids.RUN_PICKER,
                clearable=False,
                placeholder="choose a run",
                className="run-picker",
            ),
        ],
    )
    stores = [dcc.Store(id=key) for key in KEYS]
    return {
        "top": [
            dcc.Location(id=ids.URL, refresh=False),
            *stores,
            dcc.Store(id=ids.SCROLL),
            header,
            html.Div(id=ids.NOTICE, role="alert"),
        ]
    }


def listened(source: str | Mapping[str, Any]) -> str | dict:
    """The id the state callback listens to for a click's source: a pattern-matching id
    becomes every element of its ``type``."""
    if isinstance(source, str):
        return source
    return {k: v if k == "type" else ALL for k, v in source.items()}


def matches(source: str | Mapping[str, Any], fired: str | Mapping[str, Any]) -> bool:
    """Whether an element with id ``fired`` is one of a click's ``source``."""
    if isinstance(source, str) or isinstance(fired, str):
        return source == fired
    return set(source) == set(fired) and all(v is ALL or fired[k] == v for k, v in source.items())


class Router:
    """The state callback: the URL is the source of truth; controls and clicks rewrite it.

    Args:
        components (sequence of Component): the page's components; their declarations
            make the state callback's inputs (clicks) and outputs (mirrors).
        catalog (RunCatalog): the runs.
        fmt (UrlFormat, optional): the page's URL format. Default: made from ``components``
    """

    def __init__(
        self, components: Sequence[object], catalog: RunCatalog, fmt: UrlFormat | None = None
    ) -> None:
        self.format = fmt or UrlFormat.of(components)
        self.clicks: tuple[Click, ...] = sum((declared(c, "CLICKS") for c in components), ())
        self.mirrors: tuple[Mirror, ...] = sum((declared(c, "MIRRORS") for c in components), ())
        self.catalog = catalog
        heard = {str(i): i for i in (Input(listened(c.source), c.prop) for c in self.clicks)}
        self.inputs = [Input(ids.URL, "search"), *heard.values()]  # one per id and property
        self.outputs = [
            Output(ids.URL, "search"),
            *(Output(m.target, m.prop) for m in self.mirrors),
            Output(ids.NOTICE, "children"),
        ]

    def register(self, app: Dash) -> None:
        """Register the state callback on ``app``."""
        app.callback(*self.outputs, *self.inputs)(self._callback)

    def _callback(self, search: str | None, *values: Any) -> tuple:
        """Dash's entry: what fired comes from Dash's callback context."""
        inputs = {
            i.component_id: v
            for i, v in zip(self.inputs[1:], values, strict=True)
            if isinstance(i.component_id, str)
        }
        if not ctx.triggered or ctx.triggered_id is None:
            return self.route(search, None)
        fired = ctx.triggered[0]
        return self.route(
            search, ctx.triggered_id, fired["prop_id"].rsplit(".", 1)[1], fired["value"], inputs
        )

    def route(
        self,
        search: str | None,
        fired: str | Mapping[str, Any] | None,
        prop: str = "n_clicks",
        value: Any = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> tuple:
        """Every output of the state callback for what fired.

        Args:
            search (str or None): the page URL's query string.
            fired (str, dict or None): the id of what fired; None or the URL's id when the
                page (re)loads.
            prop (str): the property that fired. Default: "n_clicks"
            value (object): its new value. Default: None
            inputs (mapping, optional): the current values of the click inputs with plain ids.

        Raises:
            PreventUpdate: the click leaves the view as it is.
        """
        s = self.format.parse(search)
        if fired is None or fired == ids.URL or not self._shown(s):
            return self.load(s, search)  # a (re)load, or a run removed while the page was open
        click = self._click(fired, prop, value)
        new = click.apply(s, Hit(fired, prop, value, inputs or {}, self.catalog))
        if new.run != s.run:
            return self.load(new, search)
        return self._clicked(new, search)

    def _shown(self, s: ViewState) -> bool:
        return s.run is not None and s.run in self.catalog.run_dirs()

    def _click(self, fired: str | Mapping[str, Any], prop: str, value: Any) -> Click:
        """The click declared for what fired."""
        if prop == "n_clicks" and not value:
            raise PreventUpdate  # a button just rendered has no clicks yet
        for click in self.clicks:
            if click.prop == prop and matches(click.source, fired):
                return click
        raise PreventUpdate

    def _clicked(self, new: ViewState, search: str | None) -> tuple:
        """The outputs after a click: the new URL, and the mirrors that follow clicks."""
        text = new.to_search()
        if text == (search or ""):
            raise PreventUpdate
        try:
            view = self.catalog.get(new.run)
        except InputError:
            return self.load(new, search)
        shown = (
            m.show(new, view, self.catalog) if m.follows_clicks else no_update for m in self.mirrors
        )
        return (text, *shown, None)

    def load(self, s: ViewState, search: str | None) -> tuple:
        """Every output for opening the state's run; a run that is gone (removed while the
        page was open, or never made) is reported and the newest run shown instead."""
        notice = None
        try:
            view = self.catalog.get(s.run)
        except InputError as exc:
            if not isinstance(exc, NoSuchRun) and s.run is not None:
                # there but unreadable (a damaged table): say so, do not show another run
                s = s.display_only()
                shown = [m.show(s, None, self.catalog) for m in self.mirrors]
                return (no_update, *shown, html.Div(problem(exc), className="error"))
            try:
                view = self.catalog.get(None)
            except InputError as none_left:
                s = s.display_only()
                shown = [m.show(s, None, self.catalog) for m in self.mirrors]
                return (no_update, *shown, html.Div(problem(none_left), className="error"))
            notice = f"{problem(exc)}. Showing the newest run, {view.run_id}, instead."
            s = s.display_only()
        s = s.with_(run=view.run_id)
        canonical = s.to_search()
        return (
            canonical if canonical != (search or "") else no_update,
            *(m.show(s, view, self.catalog) for m in self.mirrors),
            html.Div(notice, className="error") if notice else None,
        )


def _key(fmt: UrlFormat, scopes: tuple[str, ...]):
    """The callback that derives a key: the state's parts in ``scopes``, changed only when
    one of them changed."""

    def derive(search: str | None, old: str | None) -> str:
        s = fmt.parse(search)
        if s.run is None:
            raise PreventUpdate  # the state callback fills in the run first
        new = s.scoped(scopes).to_search()
        if new == old:
            raise PreventUpdate
        return new

    return derive


#: brings a newly opened part into view once its content has arrived (not on page load: a
#: pasted link opens at the top, with the summary); __OPENS__ becomes [[target, [query
#: names]], ...], one per declared Opens
_SCROLL = """function (search, ...rest) {
    const opens = __OPENS__;
    const seen = rest[rest.length - 1];
    const q = new URLSearchParams(search || "");
    const now = {open: {}, pending: null};
    for (const [target, names] of opens) {
        const held = names.filter(n => q.get(n) !== null).map(n => n + "=" + q.get(n));
        now.open[target] = held.length ? held.join("&") : null;
    }
    if (!seen) return now;
    const fired = dash_clientside.callback_context.triggered.map(t => t.prop_id);
    now.pending = seen.pending;
    if (fired.includes(__URL__ + ".search")) {
        for (const [target] of opens.slice().reverse()) {
            const value = now.open[target];
            if (value !== null && value !== (seen.open || {})[target]) {
                now.pending = target;
                break;
            }
        }
    }
    if (now.pending && fired.includes(now.pending + ".children")) {
        const target = now.pending;
        setTimeout(() => document.getElementById(target).scrollIntoView(), 0);
        now.pending = null;
    }
    return now;
}"""


def register_navigation(
    app: Dash, catalog: RunCatalog, components: Sequence[object], fmt: UrlFormat
) -> Router:
    """The state callback, the keys and scrolling to what was just opened, for a page made
    of ``components`` (whose URL format is ``fmt``)."""
    router = Router(components, catalog, fmt)
    router.register(app)
    for key, scopes in KEYS.items():
        app.callback(Output(key, "data"), Input(ids.URL, "search"), State(key, "data"))(
            _key(router.format, scopes)
        )
    opens = [o for c in components for o in declared(c, "OPENS")]
    targets = [[o.target, list(router.format.fields[o.field].names)] for o in opens]
    script = _SCROLL.replace("__OPENS__", json.dumps(targets))
    script = script.replace("__URL__", json.dumps(ids.URL))
    app.clientside_callback(
        script,
        Output(ids.SCROLL, "data"),
        Input(ids.URL, "search"),
        *(Input(o.target, "children") for o in opens),
        State(ids.SCROLL, "data"),
    )
    return router
