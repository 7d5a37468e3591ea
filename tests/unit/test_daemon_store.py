"""The SQLite state store: WAL, migrations once, rows that survive a reopen."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sandkasten.store.db import MIGRATIONS, SessionRow, StateDB


def row(i: int, **kw: object) -> SessionRow:
    base: dict[str, object] = dict(id=f"s{i}", image="python", image_digest="sha256:x",
                                   status="running", cwd="/workspace", workspace_id=None,
                                   created_at=100.0 + i, expires_at=200.0 + i, pid=10 + i,
                                   limits={"mem_limit_mb": 512})
    base.update(kw)
    return SessionRow(**base)  # type: ignore[arg-type]


def test_wal_private_and_migrated_once(tmp_path: Path) -> None:
    p = tmp_path / "state" / "sandkasten.db"
    db = StateDB(p)
    assert db.schema_version == len(MIGRATIONS)
    db.close()
    db = StateDB(p)  # a second open runs nothing again
    assert db.schema_version == len(MIGRATIONS)
    db.close()
    assert p.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(p) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)
    c.close()


def test_sessions_roundtrip_and_survive_reopen(tmp_path: Path) -> None:
    p = tmp_path / "sandkasten.db"
    db = StateDB(p)
    db.put_session(row(2))
    db.put_session(row(1, workspace_id="proj"))
    db.set_cwd("s1", "/tmp")
    db.set_status("s2", "destroying")
    db.close()
    db = StateDB(p)
    got = db.list_sessions()
    assert [r.id for r in got] == ["s1", "s2"]  # by creation time
    assert got[0] == row(1, workspace_id="proj", cwd="/tmp")
    assert got[1].status == "destroying" and got[1].limits == {"mem_limit_mb": 512}
    db.delete_session("s1")
    assert db.get_session("s1") is None and db.get_session("s2") is not None
    db.close()


def test_workspaces_are_idempotent(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "db")
    a = db.ensure_workspace("w", {"k": "v"})
    b = db.ensure_workspace("w", {"other": "x"})
    assert a == b and a.labels == {"k": "v"}
    assert [w.id for w in db.list_workspaces()] == ["w"]
    db.delete_workspace("w")
    assert db.get_workspace("w") is None
    db.close()


def test_concurrent_writers(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "db")

    def write(k: int) -> None:
        for i in range(50):
            db.put_session(row(k * 100 + i))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(db.list_sessions()) == 200
    db.close()
