"""Sandkasten: a self-hosted sandbox runtime for AI agents."""

__version__ = "0.1.0"
