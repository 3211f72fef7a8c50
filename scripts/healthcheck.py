#!/usr/bin/env python3
"""The Docker image's HEALTHCHECK: ``GET /healthz`` where gunicorn listens.

The address is ``IMACS_BIND`` (default ``0.0.0.0:8050``), as the entry point binds it; a
wildcard host is checked on the loopback address. Exit status 0 when /healthz answers 200,
else 1 with one line on stderr.
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_BIND = "0.0.0.0:8050"


def health_url(bind: str) -> str:
    """The /healthz URL of a gunicorn ``--bind`` address (``HOST:PORT``, ``[V6]:PORT`` or
    ``:PORT``)."""
    host, sep, port = bind.strip().rpartition(":")
    if not sep or not port.isdigit() or host.startswith("unix"):
        raise ValueError(f"IMACS_BIND={bind!r} is not HOST:PORT")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    try:
        url = health_url(os.environ.get("IMACS_BIND") or DEFAULT_BIND)
        with urllib.request.urlopen(url, timeout=4) as r:
            if r.status == 200:
                return 0
            print(f"healthcheck: {url} answered {r.status}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
