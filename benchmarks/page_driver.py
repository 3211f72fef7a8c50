"""A headless stand-in for Dash's renderer, driven from the app's own callback map.

:class:`Page` holds the components' properties the server has sent, and when some change
(a visited URL, a click) fires every callback with a changed input, as the browser does,
until nothing changes: the same POSTs to ``/_dash-update-component`` (through Flask's test
client), so what it measures is server time plus JSON encoding, and the bytes each way. It
reads the callbacks from ``app.callback_map``, so a new or changed callback is driven
without editing it (a benchmark made of hand-written payloads went stale silently; test
``app028`` runs this one on a small run).

Callbacks whose outputs are pattern-matching (``ALL``) ids are left out (they style
elements the page rendered, which a headless page has none of); pattern-matching inputs are
sent as no elements.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Call:
    """One callback request: what it produced, how long the server took, bytes each way."""

    outputs: str
    status: int
    ms: float
    up: int
    down: int


@dataclass
class Interaction:
    """Every request one user action caused."""

    name: str
    calls: list[Call] = field(default_factory=list)

    @property
    def server_ms(self) -> float:
        return sum(c.ms for c in self.calls)

    @property
    def slowest(self) -> Call:
        return max(self.calls, key=lambda c: c.ms)

    @property
    def up(self) -> int:
        """The largest request body (what a click uploads)."""
        return max((c.up for c in self.calls), default=0)

    @property
    def down(self) -> int:
        return sum(c.down for c in self.calls)


def _plain(spec_id: Any) -> bool:
    return isinstance(spec_id, str) and not spec_id.startswith("{")


class Page:
    """One browser page of ``app`` (a Dash app), without a browser."""

    def __init__(self, app: Any) -> None:
        self.client = app.server.test_client()
        self.props: dict[str, Any] = {}
        self.callbacks = []
        for key, spec in app.callback_map.items():
            if "callback" not in spec:  # a clientside callback: the browser runs it
                continue
            names = key[2:-2].split("...") if key.startswith("..") else [key]
            outputs = [n.rsplit(".", 1) for n in names]
            if not all(_plain(i) for i, _ in outputs):
                continue
            self.callbacks.append((key, outputs, spec["inputs"], spec.get("state", [])))

    def _entry(self, s: dict) -> Any:
        if not _plain(s["id"]):
            return []  # a pattern-matching input: no such element on a headless page
        name = f"{s['id']}.{s['property']}"
        return {"id": s["id"], "property": s["property"], "value": self.props.get(name)}

    def _fire(self, key: str, outputs: list, inputs: list, state: list, changed: set) -> tuple:
        outs = [{"id": i, "property": p.split("@")[0]} for i, p in outputs]
        payload = {
            "output": key,
            "outputs": outs if len(outs) > 1 else outs[0],
            "inputs": [self._entry(s) for s in inputs],
            "changedPropIds": sorted(changed),
            "state": [self._entry(s) for s in state],
        }
        body = json.dumps(payload)
        t = time.perf_counter()
        r = self.client.post("/_dash-update-component", data=body, content_type="application/json")
        ms = (time.perf_counter() - t) * 1000
        call = Call(key, r.status_code, ms, len(body), len(r.data))
        done = set()
        if r.status_code == 200:
            for cid, props in json.loads(r.data)["response"].items():
                for prop, value in props.items():
                    name = f"{cid}.{prop}"
                    if not (isinstance(value, dict) and "__dash_patch_update" in value):
                        self.props[name] = value
                    done.add(name)
        return call, done

    def change(self, name: str, changes: dict[str, Any]) -> Interaction:
        """Set some properties (``{"url.search": "?run=x"}``) and fire what follows."""
        act = Interaction(name)
        self.props.update(changes)
        changed = set(changes)
        for _ in range(12):  # a chain of callbacks settles in a few rounds
            if not changed:
                break
            now, changed = changed, set()
            for key, outputs, inputs, state in self.callbacks:
                hit = {f"{s['id']}.{s['property']}" for s in inputs} & now
                if hit:
                    call, done = self._fire(key, outputs, inputs, state, hit)
                    act.calls.append(call)
                    changed |= done
        return act

    def visit(self, name: str, search: str) -> Interaction:
        """Open ``search`` (``?run=...``): a pasted link, a back button, or the state a
        click led to (the navigation writes it to the URL)."""
        return self.change(name, {"url.search": search})
