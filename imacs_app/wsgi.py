"""WSGI entry point: ``gunicorn -w 4 -b 0.0.0.0:8050 imacs_app.wsgi:application``.

The runs folder comes from ``IMACS_RUNS`` (default ``/runs``). A misconfigured login
(``IMACS_BASIC_AUTH`` set but empty, an accounts file with no account) stops the worker with
one line on stderr and exit status 3, gunicorn's "worker failed to boot", on which the
master halts (any other status would only get the worker restarted, forever) instead of
serving openly. ``-c python:imacs_app.gunicorn_conf`` checks it in the master, before forking.
"""

from __future__ import annotations

import os
import sys

from imacs.errors import InputError

from .gunicorn_conf import EXIT_BOOT_ERROR
from .main import create_app

try:
    application = create_app(os.environ.get("IMACS_RUNS", "/runs")).server
except InputError as exc:
    print(f"imacs: error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BOOT_ERROR) from None
