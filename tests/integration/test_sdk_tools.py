"""Agent tools against the real daemon: OpenAI Agents function tools invoked through the
Agents SDK's own tool machinery, and `sandkasten mcp` over real stdio with the MCP client."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from sandkasten import SandboxClient
from sandkasten.sdk import SyncSandboxClient
from tests.support import sdk as fx
from tests.support.sdk import Daemon

image_store = fx.image_store
sk_daemon = fx.sk_daemon

pytestmark = pytest.mark.integration


def test_openai_agents_function_tools(sk_daemon: Daemon) -> None:
    from agents import FunctionTool
    from agents.tool_context import ToolContext

    from sandkasten.sdk.openai_agents import sandbox_tools

    async def call(tool: FunctionTool, args: dict[str, object]) -> str:
        ctx = ToolContext(context=None, tool_name=tool.name, tool_call_id="call-1",
                          tool_arguments=json.dumps(args))
        return str(await tool.on_invoke_tool(ctx, json.dumps(args)))

    async def main() -> None:
        async with (
            SandboxClient(sk_daemon.base_url, sk_daemon.api_key) as client,
            await client.create_session() as session,
        ):
            tools = {t.name: t for t in sandbox_tools(session)}
            assert set(tools) == {"sandbox_exec", "sandbox_write", "sandbox_read",
                                  "sandbox_list"}
            assert tools["sandbox_exec"].params_json_schema["required"] == ["cmd"]
            out = await call(tools["sandbox_write"], {"path": "hi.txt", "content": "hey"})
            assert out == "wrote 3 bytes to /workspace/hi.txt"
            assert await call(tools["sandbox_read"], {"path": "hi.txt"}) == "hey"
            listing = json.loads(await call(tools["sandbox_list"], {}))
            assert {"name": "hi.txt", "type": "file", "size": 3} in listing
            res = json.loads(await call(tools["sandbox_exec"], {"cmd": "cat hi.txt; false"}))
            assert res == {"exit_code": 1, "cwd": "/workspace", "output": "hey",
                           "truncated": False}
            err = await call(tools["sandbox_read"], {"path": "nope.txt"})
            # the daemon's own error reaches the model
            assert err.startswith("error: 404 file_not_found")
    asyncio.run(main())


def test_mcp_server_over_stdio(sk_daemon: Daemon) -> None:
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from sandkasten.cli import main; main()", "mcp", "--image", "python"],
        env={"SANDKASTEN_URL": sk_daemon.base_url, "SANDKASTEN_API_KEY": sk_daemon.api_key},
    )

    def text(result: object) -> str:
        return "".join(getattr(c, "text", "") for c in result.content)  # type: ignore[attr-defined]

    async def main() -> None:
        async with Client(params) as mcp:
            tools = {t.name: t for t in (await mcp.list_tools()).tools}
            assert set(tools) == {"exec", "write", "read", "list"}
            assert "persistent" in (tools["exec"].description or "")
            r = await mcp.call_tool("write", {"path": "m.txt", "content": "from mcp"})
            assert text(r) == "wrote 8 bytes to /workspace/m.txt"
            assert text(await mcp.call_tool("read", {"path": "/workspace/m.txt"})) == "from mcp"
            await mcp.call_tool("exec", {"cmd": "cd / && export X=1"})
            res = json.loads(text(await mcp.call_tool("exec", {"cmd": "echo $X; pwd"})))
            assert res["output"] == "1\n/\n" and res["exit_code"] == 0
            assert "m.txt" in text(await mcp.call_tool("list", {}))
            bad = await mcp.call_tool("read", {"path": "missing"})
            assert bad.is_error and "404 file_not_found" in text(bad)
            with SyncSandboxClient(sk_daemon.base_url, sk_daemon.api_key) as c:
                assert len(c.list_sessions()) == 1
    asyncio.run(main())
    with SyncSandboxClient(sk_daemon.base_url, sk_daemon.api_key) as c:
        for _ in range(50):  # the server destroys its session when the client disconnects
            if not c.list_sessions():
                break
            import time
            time.sleep(0.1)
        assert c.list_sessions() == []
