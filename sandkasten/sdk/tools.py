"""The agent tools over one session: exec, write, read, list.

One implementation, two front ends: ``sandkasten.sdk.openai_agents`` wraps these as
OpenAI Agents SDK function tools and ``sandkasten.mcp`` as MCP tools. Each returns text a
model can read (JSON for structured results) and raises ``SandkastenClientError`` on
failure, which each front end reports to the model as a tool error.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from ._client import Session

DEFAULT_MAX_OUTPUT_CHARS = 50_000

TOOL_DESCRIPTIONS = {
    "exec": (
        "Run a shell command in the sandbox's persistent bash shell. The working directory, "
        "environment variables and background processes persist between calls; the "
        "workspace is /workspace. Returns JSON with exit_code, cwd, output (stdout and "
        "stderr interleaved) and truncated."
    ),
    "write": (
        "Write a text file in the sandbox, creating parent directories. Relative paths are "
        "inside /workspace. Overwrites an existing file."
    ),
    "read": "Read a text file from the sandbox. Relative paths are inside /workspace.",
    "list": (
        "List a directory in the sandbox (default /workspace). Returns JSON entries with "
        "name, type (file, dir, symlink) and size."
    ),
}


def _clip(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}", True


class SandboxTools:
    """The four tools bound to ``session``. Output longer than ``max_output_chars`` is cut
    in the middle (head and tail kept), so one noisy command cannot flood a model's
    context."""

    def __init__(self, session: Session, *, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS):
        self.session = session
        self.max_output_chars = max_output_chars

    async def exec(self, cmd: str, timeout_ms: int | None = None) -> str:
        r = await self.session.exec(cmd, timeout_ms=timeout_ms)
        output, cut = _clip(r.output, self.max_output_chars)
        return json.dumps({"exit_code": r.exit_code, "cwd": r.cwd, "output": output,
                           "truncated": r.truncated or cut})

    async def write(self, path: str, content: str) -> str:
        await self.session.write(path, content)
        full = path if path.startswith("/") else f"/workspace/{path}"
        return f"wrote {len(content.encode())} bytes to {full}"

    async def read(self, path: str) -> str:
        fc = await self.session.read_file(path)
        text, cut = _clip(fc.content.decode("utf-8", "replace"), self.max_output_chars)
        if fc.truncated or cut:
            text += "\n[file truncated]"
        return text

    async def list(self, path: str = "/workspace") -> str:
        entries = await self.session.list(path)
        return json.dumps([{"name": e.name, "type": e.type, "size": e.size} for e in entries])

    def functions(self) -> dict[str, Callable[..., Awaitable[str]]]:
        return {"exec": self.exec, "write": self.write, "read": self.read, "list": self.list}
