"""The dashboard page's view state: the URL keys its components declare
(:data:`imacs_app.components.COMPONENTS`, see :mod:`imacs_app.declare`).

``?run=ID&concept=3&image=12&class=cat&class=dog&outcome=only_b&meta=site%3Dnorth&color=diff``
``&measure=relative`` ranks by relative reliance instead of shares of attribution.

The ranking shows concepts (clusters grouped by the models' answers) unless the URL says
``level=cluster``; ``concept=N`` opens concept N, ``cluster=N`` opens cluster N at the
cluster level (so links made before concepts existed still open the cluster they named).
In the state, ``cluster`` is the selected group at the state's ``level``.
"""

from __future__ import annotations

from typing import Any

from . import declare
from .components import COMPONENTS


class ViewState(declare.ViewState):
    """A view state of the dashboard's page: ``ViewState(run="r", cluster=3)``; parts not
    given are at their defaults, and a part no component declares is a TypeError."""

    __slots__ = ()

    def __init__(self, **values: Any) -> None:
        made = PAGE.state(**values)
        object.__setattr__(self, "_format", PAGE)
        object.__setattr__(self, "_values", made._values)


#: the URL format of the dashboard's page
PAGE = declare.UrlFormat.of(COMPONENTS, ViewState)


def parse_search(search: str | None) -> ViewState:
    """Parse ``?...`` into a state of the page; anything malformed is ignored."""
    return PAGE.parse(search)  # type: ignore[return-value]
