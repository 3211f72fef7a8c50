"""The imacs dashboard (Dash). Reads run directories; never imports torch."""

from .main import create_app, serve

__all__ = ["create_app", "serve"]
