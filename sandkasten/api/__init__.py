"""The REST API: ``create_app(config, runtime=None)`` builds the FastAPI application."""

from sandkasten.api.app import create_app

__all__ = ["create_app"]
