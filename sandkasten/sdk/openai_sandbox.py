"""A Sandkasten backend for the OpenAI Agents SDK's sandbox interface (extra ``agents``).

The Agents SDK (``openai-agents`` >= 0.24) runs sandbox agents on a ``BaseSandboxClient``
that creates ``BaseSandboxSession`` objects: exec with split stdout/stderr and an exit
code, read, write, and ``persist_workspace``/``hydrate_workspace`` as tar archives. This
module implements that interface over a self-hosted Sandkasten daemon, so such agents run
on your own machine with neither Docker nor KVM::

    from agents.sandbox import SandboxAgent, SandboxRunConfig
    from sandkasten.sdk.openai_sandbox import (
        SandkastenSandboxClient, SandkastenSandboxClientOptions)

    client = SandkastenSandboxClient(base_url="http://localhost:8080", api_key="...")
    run_config = SandboxRunConfig(client=client,
                                  options=SandkastenSandboxClientOptions(image="python"))

Mapping: exec → ``POST /exec`` with ``split_output`` (each command runs as ``sh -lc`` in a
child of the persistent shell, so one command's ``cd`` does not leak into the next);
read/write → ``fs/read``/``fs/write``; persist/hydrate → the workspace archive endpoints
(``GET``/``PUT /v1/workspaces/{id}/archive``) when the session has a workspace, else the
session's ``fs/archive`` and an in-sandbox ``tar -x``. The API key is never written into the
serialized session state.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import tarfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Literal

from agents.sandbox.errors import (
    ExecTimeoutError,
    ExecTransportError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
    WorkspaceStartError,
    WorkspaceWriteTypeError,
)
from agents.sandbox.manifest import Manifest
from agents.sandbox.session import SandboxSession, SandboxSessionState
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.dependencies import Dependencies
from agents.sandbox.session.manager import Instrumentation
from agents.sandbox.session.sandbox_client import BaseSandboxClient, BaseSandboxClientOptions
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExecResult, User

from ._client import SandboxClient, Session
from ._errors import NotFoundError, SandkastenClientError

DEFAULT_ROOT = "/workspace"
#: An exec with no timeout from the Agents SDK still ends: the daemon caps it at
#: ``defaults.max_exec_timeout_ms``; this is what we ask for.
DEFAULT_EXEC_TIMEOUT_S = 600.0


class SandkastenSandboxClientOptions(BaseSandboxClientOptions):
    """How to create the Sandkasten session behind an agent's sandbox."""

    type: Literal["sandkasten"] = "sandkasten"
    image: str | None = None
    workspace_id: str | None = None
    ttl_seconds: int | None = None
    cpu_limit: float | None = None
    mem_limit_mb: int | None = None
    pids_limit: int | None = None
    destroy_on_exit: bool = True


class SandkastenSandboxSessionState(SandboxSessionState):
    """Serializable state: which daemon and which session (never the API key)."""

    type: Literal["sandkasten"] = "sandkasten"
    base_url: str
    sandbox_id: str
    image: str | None = None
    workspace_id: str | None = None
    ttl_seconds: int | None = None
    cpu_limit: float | None = None
    mem_limit_mb: int | None = None
    pids_limit: int | None = None
    destroy_on_exit: bool = True


def _filter_tar(data: bytes, skip: set[Path]) -> bytes:
    """Drop members under the workspace-relative paths in ``skip`` (ephemeral mounts etc.)."""
    if not skip:
        return data
    prefixes = [PurePosixPath(p.as_posix()) for p in skip]
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            rel = PurePosixPath(m.name.removeprefix("./").lstrip("/") or ".")
            if any(rel == p or p in rel.parents for p in prefixes):
                continue
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    return out.getvalue()


class SandkastenSandboxSession(BaseSandboxSession):
    """One Sandkasten session seen through the Agents SDK's session interface."""

    state: SandkastenSandboxSessionState

    def __init__(self, *, state: SandkastenSandboxSessionState, client: SandboxClient,
                 session: Session) -> None:
        self.state = state
        self._client = client
        self._session = session

    @property
    def sandkasten_session(self) -> Session:
        return self._session

    async def _prepare_backend_workspace(self) -> None:
        root = self.state.manifest.root
        res = await self._session.exec_split(f"mkdir -p -- {shlex.quote(root)}")
        if res.exit_code != 0:
            raise WorkspaceStartError(path=Path(root), message=f"mkdir {root}: {res.stderr}")

    async def _exec_internal(self, *command: str | Path, timeout: float | None = None
                             ) -> ExecResult:
        argv = [str(c) for c in command]
        root = shlex.quote(self.state.manifest.root)
        envs = await self.state.manifest.environment.resolve()
        env = "env -- " + " ".join(shlex.quote(f"{k}={v}") for k, v in envs.items()) + " " \
            if envs else ""
        # A subshell: the sandbox's persistent shell keeps its own cwd and environment.
        cmd = f"(cd {root} 2>/dev/null; {env}{shlex.join(argv)})"
        seconds = DEFAULT_EXEC_TIMEOUT_S if timeout is None else max(timeout, 0.001)
        try:
            res = await self._session.exec_split(cmd, timeout_ms=max(1, int(seconds * 1000)))
        except SandkastenClientError as e:
            raise ExecTransportError(command=argv, cause=e) from e
        if res.timed_out:
            raise ExecTimeoutError(command=argv, timeout_s=timeout)
        return ExecResult(stdout=res.stdout.encode(), stderr=res.stderr.encode(),
                          exit_code=res.exit_code)

    async def read(self, path: Path | str, *, user: str | User | None = None) -> io.IOBase:
        if user is not None:
            target = await self._check_read_with_exec(path, user=user)
        else:
            target = self.normalize_path(path)
        try:
            fc = await self._session.read_file(target.as_posix())
        except NotFoundError as e:
            raise WorkspaceReadNotFoundError(path=target, cause=e) from e
        except SandkastenClientError as e:
            raise WorkspaceArchiveReadError(path=target, cause=e) from e
        return io.BytesIO(fc.content)

    async def write(self, path: Path | str, data: io.IOBase, *,
                    user: str | User | None = None) -> None:
        if user is not None:
            await self._check_write_with_exec(path, user=user)
        target = self.normalize_path(path, for_write=True)
        payload = data.read()
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not isinstance(payload, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=target, actual_type=type(payload).__name__)
        try:
            await self._session.write(target.as_posix(), bytes(payload))
        except SandkastenClientError as e:
            raise WorkspaceArchiveWriteError(path=target, cause=e) from e

    async def running(self) -> bool:
        try:
            info = await self._session.info()
        except SandkastenClientError:
            return False
        return info.status == "running"

    def _whole_workspace(self) -> bool:
        """The agent's root is the daemon workspace itself: use its archive endpoints."""
        return bool(self.state.workspace_id) and \
            self._workspace_root_path().as_posix().rstrip("/") == DEFAULT_ROOT

    async def persist_workspace(self) -> io.IOBase:
        root = self._workspace_root_path()
        try:
            if self._whole_workspace():
                assert self.state.workspace_id is not None
                data = await self._client.export_workspace(self.state.workspace_id)
            else:
                data = await self._session.archive(root.as_posix())
        except SandkastenClientError as e:
            raise WorkspaceArchiveReadError(path=root, cause=e) from e
        return io.BytesIO(_filter_tar(data, self._persist_workspace_skip_relpaths()))

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        root = self._workspace_root_path()
        payload = data.read()
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not isinstance(payload, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=root, actual_type=type(payload).__name__)
        try:
            if self._whole_workspace():
                assert self.state.workspace_id is not None
                # The daemon unpacks it safely (no escapes, no devices) into the workspace
                # directory that is this session's /workspace.
                await self._client.import_workspace(self.state.workspace_id, bytes(payload))
                return
            tmp = f"/tmp/.sandkasten-hydrate-{uuid.uuid4().hex}.tar"
            await self._session.write(tmp, bytes(payload))
            res = await self._session.exec_split(
                f"tar -C {shlex.quote(root.as_posix())} -xf {tmp}; rc=$?; rm -f {tmp}; exit $rc"
            )
        except SandkastenClientError as e:
            raise WorkspaceArchiveWriteError(path=root, cause=e) from e
        if res.exit_code != 0:
            raise WorkspaceArchiveWriteError(
                path=root, context={"reason": "tar_extract_failed", "stderr": res.stderr})

    async def _shutdown_backend(self) -> None:
        if self.state.destroy_on_exit:
            with contextlib.suppress(SandkastenClientError):
                await self._session.destroy()


class SandkastenSandboxClient(BaseSandboxClient[SandkastenSandboxClientOptions]):
    """Creates, resumes and deletes Sandkasten-backed sandbox sessions."""

    backend_id = "sandkasten"
    supports_default_options = True

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        client: SandboxClient | None = None,
        instrumentation: Instrumentation | None = None,
        dependencies: Dependencies | None = None,
    ) -> None:
        self._client = client or SandboxClient(base_url, api_key)
        self._owns_client = client is None
        self._instrumentation = instrumentation or Instrumentation()
        self._dependencies = dependencies

    async def create(
        self,
        *,
        snapshot: SnapshotSpec | SnapshotBase | None = None,
        manifest: Manifest | None = None,
        options: SandkastenSandboxClientOptions | None = None,
    ) -> SandboxSession:
        options = options or SandkastenSandboxClientOptions()
        manifest = self._validate_manifest_for_create(manifest or Manifest(root=DEFAULT_ROOT))
        session = await self._client.create_session(
            options.image, ttl_seconds=options.ttl_seconds, workspace_id=options.workspace_id,
            cpu_limit=options.cpu_limit, mem_limit_mb=options.mem_limit_mb,
            pids_limit=options.pids_limit,
        )
        session_id = uuid.uuid4()
        state = SandkastenSandboxSessionState(
            session_id=session_id, manifest=manifest,
            snapshot=resolve_snapshot(snapshot, str(session_id)),
            base_url=self._client.base_url, sandbox_id=session.id, image=options.image,
            workspace_id=session.workspace_id or options.workspace_id,
            ttl_seconds=options.ttl_seconds, cpu_limit=options.cpu_limit,
            mem_limit_mb=options.mem_limit_mb, pids_limit=options.pids_limit,
            destroy_on_exit=options.destroy_on_exit,
        )
        inner = SandkastenSandboxSession(state=state, client=self._client, session=session)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    async def delete(self, session: SandboxSession) -> SandboxSession:
        inner = session._inner
        if not isinstance(inner, SandkastenSandboxSession):
            raise TypeError("SandkastenSandboxClient.delete expects a Sandkasten session")
        with contextlib.suppress(SandkastenClientError):
            await inner.sandkasten_session.destroy()
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """Re-attach to the session if it still lives; else create a replacement (same
        image, limits and workspace) whose workspace the SDK hydrates from the snapshot."""
        if not isinstance(state, SandkastenSandboxSessionState):
            raise TypeError("SandkastenSandboxClient.resume expects a Sandkasten session state")
        reconnected = False
        try:
            session = await self._client.get_session(state.sandbox_id)
            reconnected = (await session.info()).status == "running"
        except NotFoundError:
            pass
        if not reconnected:
            session = await self._client.create_session(
                state.image, ttl_seconds=state.ttl_seconds, workspace_id=state.workspace_id,
                cpu_limit=state.cpu_limit, mem_limit_mb=state.mem_limit_mb,
                pids_limit=state.pids_limit,
            )
            state.sandbox_id = session.id
            state.workspace_root_ready = False
        inner = SandkastenSandboxSession(state=state, client=self._client, session=session)
        inner._set_start_state_preserved(reconnected, system=reconnected)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, SandkastenSandboxSessionState)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> SandkastenSandboxClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
