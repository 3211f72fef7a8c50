"""The page URL holds the view state, so a pasted link opens the same view.

``?run=ID&concept=3&image=12&class=cat&class=dog&outcome=only_b&meta=site%3Dnorth&color=diff``
``&measure=relative`` ranks by relative reliance instead of shares of attribution.

The ranking shows concepts (clusters grouped by the models' answers) unless the URL says
``level=cluster``; ``concept=N`` opens concept N, ``cluster=N`` opens cluster N at the
cluster level (so links made before concepts existed still open the cluster they named).
In the state, ``cluster`` is the selected group at the state's ``level``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qs, urlencode

from .reader import OUTCOMES, Filters


@dataclass(frozen=True)
class ViewState:
    run: str | None = None
    cluster: int | None = None
    image: int | None = None
    classes: tuple[str, ...] = ()
    outcome: str | None = None
    meta: tuple[tuple[str, str], ...] = ()
    color: str = "cluster"
    measure: str = "share"  # or "relative": shares renormalised over each image's patches
    level: str = "concept"  # or "cluster": what the ranking and the selection are

    @property
    def filters(self) -> Filters:
        return Filters(classes=self.classes, outcome=self.outcome, meta=self.meta)

    def with_(self, **kw: object) -> ViewState:
        return replace(self, **kw)  # type: ignore[arg-type]

    def to_search(self) -> str:
        q: list[tuple[str, str]] = []
        if self.run is not None:
            q.append(("run", self.run))
        if self.level != "concept" and self.cluster is None:
            q.append(("level", self.level))
        if self.cluster is not None:
            q.append((self.level, str(self.cluster)))
        if self.image is not None:
            q.append(("image", str(self.image)))
        q.extend(("class", c) for c in self.classes)
        if self.outcome:
            q.append(("outcome", self.outcome))
        q.extend(("meta", f"{k}={v}") for k, v in self.meta)
        if self.color != "cluster":
            q.append(("color", self.color))
        if self.measure != "share":
            q.append(("measure", self.measure))
        return "?" + urlencode(q) if q else ""


def _int(values: list[str] | None) -> int | None:
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


def parse_search(search: str | None) -> ViewState:
    """Parse ``?...`` into a state; anything malformed is ignored rather than fatal."""
    q = parse_qs((search or "").lstrip("?"), keep_blank_values=False)
    outcome = (q.get("outcome") or [None])[0]
    meta = []
    for item in q.get("meta", []):
        if "=" in item:
            k, v = item.split("=", 1)
            meta.append((k, v))
    color = (q.get("color") or ["cluster"])[0]
    measure = (q.get("measure") or ["share"])[0]
    if "concept" in q:
        level, selected = "concept", _int(q.get("concept"))
    elif "cluster" in q or (q.get("level") or [""])[0] == "cluster":
        level, selected = "cluster", _int(q.get("cluster"))
    else:
        level, selected = "concept", None
    return ViewState(
        run=(q.get("run") or [None])[0],
        level=level,
        cluster=selected,
        image=_int(q.get("image")),
        classes=tuple(dict.fromkeys(q.get("class", []))),
        outcome=outcome if outcome in OUTCOMES else None,
        meta=tuple(dict.fromkeys(meta)),
        color=color if color in ("cluster", "diff") else "cluster",
        measure=measure if measure in ("share", "relative") else "share",
    )
