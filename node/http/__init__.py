"""The client HTTP edge of a node (docs/api.md): `build_client_app(coordinator)`."""

from node.http.app import build_client_app

__all__ = ["build_client_app"]
