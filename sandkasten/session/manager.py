"""Sessions: create, look up, destroy, expire, and re-attach after a daemon restart.

The manager owns the mapping session id → live :class:`~sandkasten.runtime.base.Sandbox`
and keeps the state store in step with it:

- a row is written (status ``running``) only after the sandbox exists, and deleted only
  after the sandbox is destroyed; a crash in between leaves a row whose sandbox is gone,
  which :meth:`SessionManager.restore` cleans up on the next start;
- ``restore`` re-attaches every session whose runner still lives (``runtime.attach``) and
  removes what dead ones left behind (``runtime.cleanup``), so nothing leaks across a
  stop, a SIGKILL or a reboot of the daemon.

Concurrency: all methods run on the event loop; the dictionaries are only touched between
awaits, and a session being destroyed is removed from the table first, so no request can
reach a sandbox that is going away.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandkasten.config import Config
from sandkasten.errors import ConflictError, NotFoundError, UnprocessableError, with_code
from sandkasten.runtime.base import Runtime, Sandbox, SessionSpec
from sandkasten.session.images import ImageInfo, ImageSource
from sandkasten.session.workspaces import Workspaces, validate_workspace_id
from sandkasten.store.db import SessionRow, StateDB

log = logging.getLogger("sandkasten")


def pid_alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its parent counts as
    gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def iso(ts: float) -> str:
    """Epoch seconds → ``2026-02-08T10:00:00Z`` (the Go daemon's format)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CreateRequest:
    image: str | None = None
    ttl_seconds: int | None = None
    workspace_id: str | None = None
    cpu_limit: float | None = None
    mem_limit_mb: int | None = None
    pids_limit: int | None = None
    network_mode: str | None = None


class SessionManager:
    def __init__(
        self,
        config: Config,
        runtime: Runtime,
        db: StateDB,
        images: ImageSource,
        *,
        pool: Any = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.db = db
        self.images = images
        self.pool = pool
        self.workspaces = Workspaces(config.data_dir / "workspaces", db)
        self._rows: dict[str, SessionRow] = {}
        self._sandboxes: dict[str, Sandbox] = {}
        self._pending = 0
        self._background: set[asyncio.Future[None]] = set()

    # ---- lookup ---------------------------------------------------------------------------
    def get(self, session_id: str) -> SessionRow:
        row = self._rows.get(session_id)
        if row is None:
            raise with_code(
                NotFoundError(
                    f"session not found: {session_id}",
                    hint="it expired or was destroyed; live sessions: GET /v1/sessions "
                    "(sandkasten ps)",
                ),
                "session_not_found",
            )
        return row

    def sandbox(self, session_id: str) -> Sandbox:
        self.get(session_id)
        return self._sandboxes[session_id]

    def list_sessions(self) -> list[SessionRow]:
        return sorted(self._rows.values(), key=lambda r: r.created_at)

    def workspace_in_use(self, workspace_id: str) -> list[str]:
        return [r.id for r in self._rows.values() if r.workspace_id == workspace_id]

    def note_cwd(self, session_id: str, cwd: str) -> None:
        row = self._rows.get(session_id)
        if row is not None and cwd and row.cwd != cwd:
            row.cwd = cwd
            self.db.set_cwd(session_id, cwd)

    # ---- create ---------------------------------------------------------------------------
    def _check_image(self, name: str) -> None:
        allowed = self.config.allowed_images
        if allowed and name not in allowed:
            raise with_code(
                UnprocessableError(
                    f"image not allowed: {name}",
                    hint=f"allowed_images in the config lists: {', '.join(allowed)}",
                ),
                "image_not_allowed",
            )

    def _workspace_for(self, req: CreateRequest, session_id: str) -> tuple[str | None, Path | None]:
        ws = self.config.workspace
        if req.workspace_id is not None:
            validate_workspace_id(req.workspace_id)
            if not ws.enabled:
                raise with_code(
                    UnprocessableError(
                        "workspaces are disabled", hint="set workspace.enabled: true in the config"
                    ),
                    "workspaces_disabled",
                )
            return req.workspace_id, self.workspaces.ensure(req.workspace_id)
        if ws.enabled and ws.persist_by_default:
            wid = f"ws-{session_id}"
            return wid, self.workspaces.ensure(wid)
        return None, None

    async def create(self, req: CreateRequest) -> SessionRow:
        name = req.image or self.config.default_image
        self._check_image(name)
        limit = self.config.max_sessions
        if limit and len(self._rows) + self._pending >= limit:
            raise with_code(
                ConflictError(
                    f"session limit reached ({limit})",
                    hint="destroy a session or raise max_sessions",
                ),
                "session_limit",
            )
        image = await asyncio.to_thread(self.images.resolve, name)
        d = self.config.defaults
        cpu = req.cpu_limit if req.cpu_limit is not None else d.cpu_limit
        mem = req.mem_limit_mb if req.mem_limit_mb is not None else d.mem_limit_mb
        pids = req.pids_limit if req.pids_limit is not None else d.pids_limit
        ttl = req.ttl_seconds or self.config.session_ttl_seconds

        self._pending += 1
        try:
            sandbox = None
            workspace_id: str | None = None
            plain = (
                req.workspace_id is None
                and not self.config.workspace.persist_by_default
                and (cpu, mem, pids) == (d.cpu_limit, d.mem_limit_mb, d.pids_limit)
            )
            if plain and self.pool is not None:
                sandbox = await self.pool.acquire(image)
            if sandbox is None:
                session_id = secrets.token_hex(6)
                workspace_id, workspace_dir = self._workspace_for(req, session_id)
                spec = SessionSpec(
                    id=session_id,
                    image=name,
                    layer_paths=image.layer_paths,
                    image_env=image.env,
                    image_workdir=image.workdir,
                    cpu_limit=cpu,
                    mem_limit_mb=mem,
                    pids_limit=pids,
                    network_mode="none",
                    exec_mode=d.exec_mode,
                    shell_prefer=list(d.shell_prefer),
                    readonly_rootfs=d.readonly_rootfs,
                    workspace_dir=workspace_dir,
                    seccomp=self.config.security.seccomp,
                )
                await asyncio.to_thread(self.images.lease, session_id, image)
                sandbox = await self._create_shielded(spec)
            else:
                await asyncio.to_thread(self.images.lease, sandbox.id, image)
            return self._register(
                sandbox,
                image,
                workspace_id,
                ttl,
                {"cpu_limit": cpu, "mem_limit_mb": mem, "pids_limit": pids},
            )
        finally:
            self._pending -= 1

    async def _create_shielded(self, spec: SessionSpec) -> Sandbox:
        """``runtime.create``, not abandoned half-way: if the request is cancelled (client
        gone, daemon stopping) the creation finishes and the sandbox is destroyed, instead
        of living on unregistered."""
        task = asyncio.ensure_future(self.runtime.create(spec))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._discard(t, spec.id))
            raise
        except BaseException:
            await asyncio.to_thread(self.images.release, spec.id)
            raise

    def _discard(self, task: asyncio.Future[Sandbox], session_id: str) -> None:
        async def run() -> None:
            try:
                if not task.cancelled() and task.exception() is None:
                    await task.result().destroy()
            except Exception:
                log.exception("discarding an abandoned sandbox failed id=%s", session_id)
            finally:
                await asyncio.to_thread(self.images.release, session_id)

        self._background.add(t := asyncio.ensure_future(run()))
        t.add_done_callback(self._background.discard)

    def _register(
        self,
        sandbox: Sandbox,
        image: ImageInfo,
        workspace_id: str | None,
        ttl: int,
        limits: dict[str, Any],
    ) -> SessionRow:
        now = time.time()
        row = SessionRow(
            id=sandbox.id,
            image=image.name,
            image_digest=image.manifest_digest,
            status="running",
            cwd="/workspace",
            workspace_id=workspace_id,
            created_at=now,
            expires_at=now + ttl,
            pid=getattr(sandbox, "pid", 0),
            limits=limits,
        )
        self.db.put_session(row)
        self._rows[row.id] = row
        self._sandboxes[row.id] = sandbox
        log.info(
            "session created id=%s image=%s workspace=%s", row.id, row.image, workspace_id or "-"
        )
        return row

    # ---- destroy --------------------------------------------------------------------------
    async def destroy(self, session_id: str, *, reason: str = "deleted") -> None:
        self.get(session_id)
        # Unpublish first: no new request can reach a sandbox that is being torn down.
        row = self._rows.pop(session_id)
        sandbox = self._sandboxes.pop(session_id)
        row.status = "destroying"
        try:
            await sandbox.destroy()
        finally:
            await asyncio.to_thread(self.images.release, session_id)
            self.db.delete_session(session_id)
        log.info("session destroyed id=%s reason=%s", session_id, reason)

    async def reap(self, now: float | None = None) -> list[str]:
        """Destroy every session whose ``expires_at`` has passed, or whose sandbox died
        (its PID 1 exited: killed, OOM), concurrently, so one slow teardown does not hold up
        the others; return their ids."""
        now = time.time() if now is None else now
        due = {r.id: "expired" for r in self._rows.values() if r.expires_at <= now}
        for sid, sandbox in self._sandboxes.items():
            pid = getattr(sandbox, "pid", 0)
            if sid not in due and pid > 0 and not pid_alive(pid):
                due[sid] = "sandbox exited"

        async def one(sid: str) -> None:
            try:
                await self.destroy(sid, reason=due[sid])
            except NotFoundError:
                pass  # deleted by a request meanwhile
            except Exception:
                log.exception("destroying expired session failed id=%s", sid)

        await asyncio.gather(*(one(sid) for sid in due))
        return list(due)

    # ---- restart --------------------------------------------------------------------------
    async def restore(self) -> tuple[int, int]:
        """Re-attach live sessions recorded in the store; clean up dead ones.

        Returns (re-attached, cleaned up).
        """
        attached = cleaned = 0
        now = time.time()
        rows = self.db.list_sessions()
        known = {r.id for r in rows}
        # Sandboxes on disk without a row: pooled ones, or a create cut short by a SIGKILL.
        on_disk = getattr(self.runtime, "list_sessions", None)
        for orphan in sorted(set(on_disk() if callable(on_disk) else []) - known):
            try:
                await self.runtime.cleanup(orphan)
                await asyncio.to_thread(self.images.release, orphan)
                cleaned += 1
                log.info("sandbox without a session cleaned up id=%s", orphan)
            except Exception:
                log.exception("cleaning up an orphan sandbox failed id=%s", orphan)
        for row in rows:
            sandbox = None
            try:
                sandbox = await self.runtime.attach(row.id)
            except Exception:
                log.exception("re-attaching failed id=%s", row.id)
            if sandbox is not None and row.expires_at > now and row.status == "running":
                row.pid = getattr(sandbox, "pid", row.pid)
                self._rows[row.id] = row
                self._sandboxes[row.id] = sandbox
                attached += 1
                log.info("session re-attached id=%s image=%s", row.id, row.image)
                continue
            try:
                if sandbox is not None:
                    await sandbox.destroy()
                else:
                    await self.runtime.cleanup(row.id)
            except Exception:
                log.exception("cleaning up a dead session failed id=%s", row.id)
            await asyncio.to_thread(self.images.release, row.id)
            self.db.delete_session(row.id)
            cleaned += 1
            log.info(
                "session cleaned up id=%s (%s)",
                row.id,
                "expired" if sandbox is not None else "runner gone",
            )
        return attached, cleaned

    async def shutdown(self, *, keep: bool) -> None:
        """Stop: destroy every session, or (``keep``) leave them for the next start."""
        if keep:
            log.info("keeping %d session(s) for the next start", len(self._rows))
            self._rows.clear()
            self._sandboxes.clear()
            return
        ids = list(self._rows)
        results = await asyncio.gather(
            *(self.destroy(i, reason="shutdown") for i in ids), return_exceptions=True
        )
        for sid, res in zip(ids, results, strict=True):
            if isinstance(res, BaseException):
                log.error("destroying session at shutdown failed id=%s error=%s", sid, res)
