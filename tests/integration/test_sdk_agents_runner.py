"""Whole agent runs of the OpenAI Agents SDK on Sandkasten, with the SDK's own scripted
model standing in for the LLM: the Runner calls our function tools, and a SandboxAgent
runs its shell tool in a Sandkasten sandbox through SandkastenSandboxClient."""

from __future__ import annotations

import asyncio
import json

import pytest

from sandkasten import SandboxClient
from sandkasten.sdk import SyncSandboxClient
from tests.support import sdk as fx
from tests.support.sdk import Daemon

pytestmark = pytest.mark.integration
image_store = fx.image_store
sk_daemon = fx.sk_daemon


def tool_outputs(result: object) -> list[str]:
    return [str(getattr(i, "output", "")) for i in result.new_items  # type: ignore[attr-defined]
            if type(i).__name__ == "ToolCallOutputItem"]


def test_agent_runner_uses_the_function_tools(sk_daemon: Daemon) -> None:
    from agents import Agent, RunConfig, Runner
    from agents.testing import ScriptedModel, assistant_message, function_call

    from sandkasten.sdk.openai_agents import sandbox_tools

    model = ScriptedModel([
        [function_call("sandbox_write", {"path": "calc.py", "content": "print(2**10)"},
                       call_id="c1")],
        [function_call("sandbox_exec", {"cmd": "python3 calc.py"}, call_id="c2")],
        [assistant_message("2**10 is 1024")],
    ])

    async def main() -> None:
        async with (
            SandboxClient(sk_daemon.base_url, sk_daemon.api_key) as client,
            await client.create_session(image="python") as session,
        ):
            agent = Agent(name="coder", model=model, tools=sandbox_tools(session))
            result = await Runner.run(agent, "compute 2**10",
                                      run_config=RunConfig(tracing_disabled=True))
            assert result.final_output == "2**10 is 1024"
            outputs = tool_outputs(result)
            assert outputs[0] == "wrote 12 bytes to /workspace/calc.py"
            assert json.loads(outputs[1])["output"] == "1024\n"
    asyncio.run(main())
    assert model.remaining_steps == 0


def test_sandbox_agent_runs_in_sandkasten(sk_daemon: Daemon) -> None:
    from agents import RunConfig, Runner
    from agents.sandbox import SandboxAgent, SandboxRunConfig
    from agents.testing import ScriptedModel, assistant_message, function_call

    from sandkasten.sdk.openai_sandbox import (
        SandkastenSandboxClient,
        SandkastenSandboxClientOptions,
    )

    model = ScriptedModel([
        [function_call("exec_command", {"cmd": "python3 -c 'print(6 * 7)' && hostname"},
                       call_id="c1")],
        [assistant_message("it printed 42")],
    ])

    async def main() -> None:
        async with SandboxClient(sk_daemon.base_url, sk_daemon.api_key) as http:
            client = SandkastenSandboxClient(client=http)
            agent = SandboxAgent(name="builder", model=model, instructions="Run code.")
            run_config = RunConfig(
                tracing_disabled=True,
                sandbox=SandboxRunConfig(
                    client=client, options=SandkastenSandboxClientOptions(image="python")),
            )
            result = await Runner.run(agent, "print 6*7", run_config=run_config)
            assert result.final_output == "it printed 42"
            out = "\n".join(tool_outputs(result))
            assert "Process exited with code 0" in out and "Output:\n42\n" in out
    asyncio.run(main())
    with SyncSandboxClient(sk_daemon.base_url, sk_daemon.api_key) as c:
        assert c.list_sessions() == []  # the run's sandbox was destroyed afterwards
