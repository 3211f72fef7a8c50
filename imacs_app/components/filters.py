"""The filters: classes, the models' outcome and meta-annotations, which every view and
number honours, and the CSV downloads (the ranking fills their links, filtered alike)."""

from __future__ import annotations

from dash import dcc, html

from imacs.slices import OUTCOMES

from ..catalog import RunCatalog
from ..declare import Click, Hit, Mirror, Query, UrlKey, ViewState, first
from ..reader import RunView


class ids:
    """The ids the filters render (Dash's namespace convention for a component's ids)."""

    CLASS = "f-class"
    OUTCOME = "f-outcome"
    META = "f-meta"
    DL_CONCEPTS = "dl-concepts"
    DL_CLUSTERS = "dl-clusters"
    DL_PATCHES = "dl-patches"


def _read_meta(q: Query) -> tuple[tuple[str, str], ...]:
    pairs = [tuple(item.split("=", 1)) for item in q.get("meta", []) if "=" in item]
    return tuple(dict.fromkeys(pairs))  # type: ignore[arg-type]


def _read_outcome(q: Query) -> str | None:
    outcome = first(q, "outcome")
    return outcome if outcome in OUTCOMES else None


URL_KEYS = (
    UrlKey(
        "classes",
        (),
        read=lambda q: tuple(dict.fromkeys(q.get("class", []))),
        write=lambda s: [("class", c) for c in s.classes],
        names=("class",),
        position=50,
    ),
    UrlKey(
        "outcome",
        None,
        read=_read_outcome,
        write=lambda s: [("outcome", s.outcome)] if s.outcome else [],
        names=("outcome",),
        position=60,
    ),
    UrlKey(
        "meta",
        (),
        read=_read_meta,
        write=lambda s: [("meta", f"{k}={v}") for k, v in s.meta],
        names=("meta",),
        position=70,
    ),
)


def _filtered(s: ViewState, hit: Hit) -> ViewState:
    """Any filter changed: all three are read together; the open image may be filtered out."""
    meta = hit.inputs[ids.META] or []
    pairs = tuple(tuple(m.split("=", 1)) for m in meta if "=" in m)
    return s.with_(
        classes=tuple(hit.inputs[ids.CLASS] or ()),
        outcome=hit.inputs[ids.OUTCOME] or None,
        meta=pairs,
        image=None,
    )


def _class_options(s: ViewState, view: RunView | None, catalog: RunCatalog) -> list[dict]:
    return [] if view is None else [{"label": c, "value": c} for c in view.run.classes]


def _meta_options(s: ViewState, view: RunView | None, catalog: RunCatalog) -> list[dict]:
    if view is None:
        return []
    return [{"label": f"{k} = {v}", "value": f"{k}={v}"} for k, v in view.meta_options]


def _meta_style(s: ViewState, view: RunView | None, catalog: RunCatalog) -> dict:
    """The meta-annotation filter is shown only for a run that has meta-annotations."""
    return {} if view is not None and view.meta_options else {"display": "none"}


CLICKS = tuple(Click(i, _filtered, prop="value") for i in (ids.CLASS, ids.OUTCOME, ids.META))
# options and values together: Dash 4 drops a value that arrives before its option
MIRRORS = (
    Mirror(ids.CLASS, "options", _class_options),
    Mirror(ids.CLASS, "value", lambda s, view, catalog: list(s.classes)),
    Mirror(ids.OUTCOME, "value", lambda s, view, catalog: s.outcome),
    Mirror(ids.META, "options", _meta_options),
    Mirror(ids.META, "style", _meta_style),
    Mirror(ids.META, "value", lambda s, view, catalog: [f"{k}={v}" for k, v in s.meta]),
)


def layout() -> dict[str, list]:
    """Class, outcome and meta-annotation filters, and the CSV downloads."""
    section = html.Section(
        className="filters",
        children=[
            dcc.Dropdown(id=ids.CLASS, multi=True, placeholder="all classes"),
            dcc.Dropdown(
                id=ids.OUTCOME,
                options=[{"label": v, "value": k} for k, v in OUTCOMES.items()],
                placeholder="any outcome",
            ),
            dcc.Dropdown(id=ids.META, multi=True, placeholder="meta-annotations"),
            html.Div(
                className="downloads",
                children=[
                    html.A("concepts.csv", id=ids.DL_CONCEPTS, className="button", href=""),
                    html.A("clusters.csv", id=ids.DL_CLUSTERS, className="button", href=""),
                    html.A("patches.csv", id=ids.DL_PATCHES, className="button", href=""),
                ],
            ),
        ],
    )
    return {"top": [section]}
