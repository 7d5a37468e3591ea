"""The daemon's SQLite state store (sessions, workspaces)."""

from sandkasten.store.db import SessionRow, StateDB, WorkspaceRow

__all__ = ["SessionRow", "StateDB", "WorkspaceRow"]
