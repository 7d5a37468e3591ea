"""OpenAI Agents SDK function tools bound to a Sandkasten session (extra ``agents``).

    from agents import Agent, Runner
    from sandkasten import SandboxClient
    from sandkasten.sdk.openai_agents import sandbox_tools

    async with await client.create_session(image="python") as session:
        agent = Agent(name="coder", tools=sandbox_tools(session))
        await Runner.run(agent, "Compute 2**100 in Python")

The tools are named ``sandbox_exec``, ``sandbox_write``, ``sandbox_read`` and
``sandbox_list`` (a ``prefix`` changes that). Errors from the daemon reach the model as the
tool's result, the SDK's default, so the agent can react to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client import Session
from ._errors import SandkastenClientError
from .tools import DEFAULT_MAX_OUTPUT_CHARS, TOOL_DESCRIPTIONS, SandboxTools

if TYPE_CHECKING:
    from agents import FunctionTool


def _import_function_tool() -> Any:
    try:
        from agents import function_tool
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the OpenAI Agents SDK is not installed: pip install 'sandkasten[agents]'"
        ) from e
    return function_tool


def tool_error_message(_ctx: Any, error: Exception) -> str:
    """What the model reads when a tool fails: the daemon's own message (e.g. "file not
    found: /workspace/x"), so the agent can correct itself; other errors stay generic."""
    if isinstance(error, SandkastenClientError):
        return f"error: {error}"
    return "error: the sandbox tool failed unexpectedly"


def sandbox_tools(
    session: Session,
    *,
    prefix: str = "sandbox_",
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
) -> list[FunctionTool]:
    """Function tools (exec, write, read, list) that act on ``session``."""
    function_tool = _import_function_tool()
    tools = SandboxTools(session, max_output_chars=max_output_chars)

    async def exec_(cmd: str, timeout_ms: int | None = None) -> str:
        """Run a shell command.

        Args:
            cmd: The shell command line, run by bash in the sandbox.
            timeout_ms: Kill the command after this many milliseconds (the daemon's default
                applies when omitted).
        """
        return await tools.exec(cmd, timeout_ms)

    async def write(path: str, content: str) -> str:
        """Write a file.

        Args:
            path: File path; relative paths are inside /workspace.
            content: The complete text content of the file.
        """
        return await tools.write(path, content)

    async def read(path: str) -> str:
        """Read a file.

        Args:
            path: File path; relative paths are inside /workspace.
        """
        return await tools.read(path)

    async def list_(path: str = "/workspace") -> str:
        """List a directory.

        Args:
            path: Directory path, /workspace by default.
        """
        return await tools.list(path)

    return [
        function_tool(fn, name_override=f"{prefix}{name}",
                      description_override=TOOL_DESCRIPTIONS[name], strict_mode=False,
                      failure_error_function=tool_error_message)
        for name, fn in (("exec", exec_), ("write", write), ("read", read), ("list", list_))
    ]
