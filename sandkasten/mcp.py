"""``sandkasten mcp`` (also ``sandkasten-mcp``, which runs on Windows too): an MCP server
(stdio) that gives any MCP client a sandbox.

Tools: ``exec``, ``write``, ``read``, ``list`` (the same as the OpenAI Agents tools, see
``sandkasten.sdk.tools``). The server creates its session on the first tool call, from
``--image`` (default: the daemon's default image), and destroys it when the client
disconnects; ``--session ID`` attaches to an existing session instead and leaves it alive.
Needs the extra ``mcp`` (``pip install 'sandkasten[mcp]'``); stdout carries only the
protocol, diagnostics go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from sandkasten.sdk import SandboxClient, SandkastenClientError, Session
from sandkasten.sdk.tools import TOOL_DESCRIPTIONS, SandboxTools


@dataclass
class SessionHolder:
    """Creates the session once, on first use, and owns it unless it was attached."""

    client: SandboxClient
    image: str | None = None
    workspace_id: str | None = None
    ttl_seconds: int | None = None
    session_id: str | None = None
    _tools: SandboxTools | None = None
    _owned: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def tools(self) -> SandboxTools:
        async with self._lock:
            if self._tools is None:
                session: Session
                if self.session_id:
                    session = await self.client.get_session(self.session_id)
                else:
                    session = await self.client.create_session(
                        self.image, workspace_id=self.workspace_id, ttl_seconds=self.ttl_seconds
                    )
                    self._owned = True
                self._tools = SandboxTools(session)
            return self._tools

    async def close(self) -> None:
        if self._tools is not None and self._owned:
            with contextlib.suppress(Exception):
                await self._tools.session.destroy()
        await self.client.aclose()


def build_server(holder: SessionHolder) -> Any:
    """The MCPServer with the four tools bound to ``holder``'s session."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError as e:
        raise ImportError("the MCP SDK is not installed: pip install 'sandkasten[mcp]'") from e

    async def call(name: str, *args: Any) -> str:
        # Expected failures (file not found, bad command, daemon down) reach the model
        # with the daemon's message; anything else stays a generic tool crash.
        try:
            return await (await holder.tools()).functions()[name](*args)
        except SandkastenClientError as e:
            raise ToolError(str(e)) from e

    @contextlib.asynccontextmanager
    async def lifespan(_server: Any) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            await holder.close()

    server = MCPServer(
        "sandkasten",
        instructions=(
            "A Linux sandbox with a persistent shell. Use exec to run commands, write/read "
            "for files and list for directories; the workspace is /workspace."
        ),
        lifespan=lifespan,
        log_level="WARNING",
    )

    @server.tool(name="exec", description=TOOL_DESCRIPTIONS["exec"])
    async def exec_(cmd: str, timeout_ms: int | None = None) -> str:
        return await call("exec", cmd, timeout_ms)

    @server.tool(name="write", description=TOOL_DESCRIPTIONS["write"])
    async def write(path: str, content: str) -> str:
        return await call("write", path, content)

    @server.tool(name="read", description=TOOL_DESCRIPTIONS["read"])
    async def read(path: str) -> str:
        return await call("read", path)

    @server.tool(name="list", description=TOOL_DESCRIPTIONS["list"])
    async def list_(path: str = "/workspace") -> str:
        return await call("list", path)

    return server


def serve(
    *,
    url: str | None = None,
    api_key: str | None = None,
    image: str | None = None,
    workspace_id: str | None = None,
    ttl_seconds: int | None = None,
    session_id: str | None = None,
) -> None:
    """Run the stdio MCP server until the client closes stdin."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # stderr stays for real problems
    holder = SessionHolder(SandboxClient(url, api_key), image=image, workspace_id=workspace_id,
                           ttl_seconds=ttl_seconds, session_id=session_id)
    server = build_server(holder)
    asyncio.run(server.run_stdio_async())


def mcp_command(
    url: Annotated[str | None, typer.Option(help="daemon URL (default $SANDKASTEN_URL or "
                                                 "http://localhost:8080)")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (default "
                                                     "$SANDKASTEN_API_KEY)")] = None,
    image: Annotated[str | None, typer.Option(help="image of the session")] = None,
    workspace_id: Annotated[str | None, typer.Option(help="persistent workspace")] = None,
    ttl_seconds: Annotated[int | None, typer.Option(help="session TTL")] = None,
    session: Annotated[str | None, typer.Option(help="use this existing session")] = None,
) -> None:
    """Serve the sandbox tools (exec, write, read, list) over MCP on stdio."""
    try:
        serve(url=url, api_key=api_key, image=image, workspace_id=workspace_id,
              ttl_seconds=ttl_seconds, session_id=session)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        print("hint: pip install 'sandkasten[mcp]'", file=sys.stderr)
        raise typer.Exit(1) from None


def main() -> None:
    """``sandkasten-mcp``: the same server without the daemon's CLI, so it runs wherever
    the SDK does (e.g. an MCP client on Windows talking to a daemon in WSL2)."""
    typer.run(mcp_command)
