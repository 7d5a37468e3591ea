"""The daemon's state in SQLite: sessions and workspaces.

Guarantees:
- WAL journal, ``synchronous=NORMAL``: a committed row survives a daemon SIGKILL (the WAL is
  fsynced at checkpoints; a power loss may drop the last transactions, never corrupt the file).
- Migrations run once, in order, each in its own transaction, recorded in ``migrations``.
- One connection guarded by a lock: every method is a short transaction, safe to call from
  the event loop thread and from worker threads alike.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIGRATIONS: list[str] = [
    # 1: sessions and workspaces
    """
    CREATE TABLE sessions (
        id            TEXT PRIMARY KEY,
        image         TEXT NOT NULL,
        image_digest  TEXT NOT NULL DEFAULT '',
        status        TEXT NOT NULL,
        cwd           TEXT NOT NULL DEFAULT '/workspace',
        workspace_id  TEXT,
        created_at    REAL NOT NULL,
        expires_at    REAL NOT NULL,
        pid           INTEGER NOT NULL DEFAULT 0,
        limits        TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX sessions_expires ON sessions(expires_at);
    CREATE TABLE workspaces (
        id          TEXT PRIMARY KEY,
        created_at  REAL NOT NULL,
        labels      TEXT NOT NULL DEFAULT '{}'
    );
    """,
]


@dataclass
class SessionRow:
    id: str
    image: str
    image_digest: str
    status: str
    cwd: str
    workspace_id: str | None
    created_at: float
    expires_at: float
    pid: int = 0
    limits: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkspaceRow:
    id: str
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)


class StateDB:
    """SQLite state of one daemon (``data_dir/sandkasten.db`` unless ``db_path`` says otherwise)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # check_same_thread=False: the lock below serialises every use of the connection.
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.execute("PRAGMA foreign_keys=ON")
        path.chmod(0o600)
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL)"
            )
            done = {r[0] for r in c.execute("SELECT version FROM migrations")}
        for version, script in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            with self._tx() as c:
                for stmt in (s.strip() for s in script.split(";")):
                    if stmt:
                        c.execute(stmt)
                c.execute("INSERT INTO migrations VALUES (?, ?)", (version, time.time()))

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MAX(version) FROM migrations").fetchone()
        return int(row[0] or 0)

    # ---- sessions -------------------------------------------------------------------------
    def put_session(self, s: SessionRow) -> None:
        d = asdict(s)
        d["limits"] = json.dumps(s.limits)
        cols = ", ".join(d)
        marks = ", ".join("?" for _ in d)
        with self._tx() as c:
            c.execute(
                f"INSERT OR REPLACE INTO sessions ({cols}) VALUES ({marks})",  # noqa: S608
                tuple(d.values()),
            )

    def get_session(self, session_id: str) -> SessionRow | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        return _session(row) if row else None

    def list_sessions(self) -> list[SessionRow]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM sessions ORDER BY created_at").fetchall()
        return [_session(r) for r in rows]

    def set_status(self, session_id: str, status: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE sessions SET status = ? WHERE id = ?", (status, session_id))

    def set_cwd(self, session_id: str, cwd: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE sessions SET cwd = ? WHERE id = ?", (cwd, session_id))

    def delete_session(self, session_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    # ---- workspaces -----------------------------------------------------------------------
    def ensure_workspace(
        self, workspace_id: str, labels: dict[str, str] | None = None
    ) -> WorkspaceRow:
        """Insert the workspace if new; return the stored row either way (idempotent)."""
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO workspaces (id, created_at, labels) VALUES (?, ?, ?)",
                (workspace_id, time.time(), json.dumps(labels or {})),
            )
            row = c.execute("SELECT * FROM workspaces WHERE id = ?", (workspace_id,)).fetchone()
        return _workspace(row)

    def get_workspace(self, workspace_id: str) -> WorkspaceRow | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM workspaces WHERE id = ?", (workspace_id,)
            ).fetchone()
        return _workspace(row) if row else None

    def list_workspaces(self) -> list[WorkspaceRow]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM workspaces ORDER BY created_at").fetchall()
        return [_workspace(r) for r in rows]

    def delete_workspace(self, workspace_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM workspaces WHERE id = ?", (workspace_id,))


def _session(row: sqlite3.Row) -> SessionRow:
    d = dict(row)
    d["limits"] = json.loads(d["limits"] or "{}")
    return SessionRow(**d)


def _workspace(row: sqlite3.Row) -> WorkspaceRow:
    d = dict(row)
    d["labels"] = json.loads(d["labels"] or "{}")
    return WorkspaceRow(**d)
