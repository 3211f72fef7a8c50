"""WSGI entry point: ``gunicorn -w 4 -b 0.0.0.0:8050 app.wsgi:application``.

The runs folder comes from ``IMACS_RUNS`` (default ``/runs``).
"""

from __future__ import annotations

import os

from .main import create_app

application = create_app(os.environ.get("IMACS_RUNS", "/runs")).server
