"""gunicorn settings for the dashboard: ``gunicorn -c python:imacs_app.gunicorn_conf ...``.

The image's entry point passes this. Its ``on_starting`` hook checks the login settings
(``IMACS_BASIC_AUTH``, ``IMACS_BASIC_AUTH_FILE``) in the master process, before any worker
is forked: a misconfiguration stops gunicorn at once with one line on stderr and exit status
:data:`EXIT_BOOT_ERROR`, instead of workers that fail to boot. Without this file the workers
fail with that status themselves (:mod:`imacs_app.wsgi`), which gunicorn also halts on.
"""

from __future__ import annotations

import sys
from typing import Any

from imacs.errors import InputError

from .auth import load_accounts

#: gunicorn's ``Arbiter.WORKER_BOOT_ERROR``: a worker that exits with it halts the master
#: ("Worker failed to boot."); any other status only gets the worker restarted, forever
EXIT_BOOT_ERROR = 3


def check_settings() -> None:
    """Exit with one line and :data:`EXIT_BOOT_ERROR` when the login settings are wrong."""
    try:
        load_accounts()
    except InputError as exc:
        print(f"imacs: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BOOT_ERROR) from None


def on_starting(server: Any) -> None:
    """gunicorn's hook, run once in the master before the workers are forked."""
    check_settings()
