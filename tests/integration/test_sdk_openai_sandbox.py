"""The OpenAI Agents SDK's sandbox interface on Sandkasten, against the real daemon:
create/start, argv exec with split output, read/write, persist and hydrate a workspace as
tar, serialize/resume (without the API key), delete."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path

import pytest

from sandkasten import SandboxClient
from sandkasten.sdk import SyncSandboxClient
from tests.support import sdk as fx
from tests.support.sdk import Daemon

pytestmark = pytest.mark.integration
image_store = fx.image_store
sk_daemon = fx.sk_daemon


def test_agents_sandbox_backend(sk_daemon: Daemon) -> None:
    from agents.sandbox import Manifest
    from agents.sandbox.errors import ExecTimeoutError, WorkspaceReadNotFoundError

    from sandkasten.sdk.openai_sandbox import (
        SandkastenSandboxClient,
        SandkastenSandboxClientOptions,
    )

    async def main() -> None:
        async with SandboxClient(sk_daemon.base_url, sk_daemon.api_key) as http:
            client = SandkastenSandboxClient(client=http)
            opts = SandkastenSandboxClientOptions(image="python", workspace_id="agents-ws")
            session = await client.create(options=opts)
            await session.start()
            r = await session.exec("echo hi; cd /tmp")
            assert (r.stdout, r.stderr, r.exit_code) == (b"hi\n", b"", 0)
            r = await session.exec("pwd")  # each command starts at the workspace root
            assert r.stdout == b"/workspace\n"
            r = await session.exec("python3", "-c", "import sys; print('e', file=sys.stderr); "
                                   "sys.exit(4)", shell=False)
            assert (r.stdout, r.stderr, r.exit_code) == (b"", b"e\n", 4)
            with pytest.raises(ExecTimeoutError):
                await session.exec("sleep 5", timeout=0.3)

            await session.write(Path("notes/a.txt"), io.BytesIO(b"agent data"))
            assert (await session.read(Path("notes/a.txt"))).read() == b"agent data"
            assert (await session.read(Path("/workspace/notes/a.txt"))).read() == b"agent data"
            with pytest.raises(WorkspaceReadNotFoundError):
                await session.read(Path("missing.txt"))
            assert await session.running()

            archive = (await session.persist_workspace()).read()
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                assert "notes/a.txt" in {m.name.lstrip("./") for m in tar.getmembers()}

            payload = client.serialize_session_state(session.state)
            assert sk_daemon.api_key not in json.dumps(payload)
            resumed = await client.resume(client.deserialize_session_state(payload))
            assert (await resumed.exec("cat notes/a.txt")).stdout == b"agent data"

            # a second sandbox without a workspace: hydrate through the session itself
            manifest = Manifest(root="/workspace", environment={"value": {"GREETING": "hej"}})
            other = await client.create(manifest=manifest,
                                        options=SandkastenSandboxClientOptions(image="python"))
            await other.start()
            assert (await other.exec("echo $GREETING")).stdout == b"hej\n"
            await other.hydrate_workspace(io.BytesIO(archive))
            assert (await other.exec("cat notes/a.txt")).stdout == b"agent data"
            again = (await other.persist_workspace()).read()
            with tarfile.open(fileobj=io.BytesIO(again)) as tar:
                assert "notes/a.txt" in {m.name.lstrip("./") for m in tar.getmembers()}

            await client.delete(other)
            await client.delete(session)
            await http.delete_workspace("agents-ws")
    asyncio.run(main())
    with SyncSandboxClient(sk_daemon.base_url, sk_daemon.api_key) as c:
        assert c.list_sessions() == []
