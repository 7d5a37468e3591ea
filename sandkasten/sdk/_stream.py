"""``ExecStream``: the output of a streaming exec (Server-Sent Events), then its result."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

from . import _protocol as P
from ._models import ExecResult

if TYPE_CHECKING:
    from ._client import SandboxClient


class ExecStream:
    """Output chunks of a streaming exec, then the result::

        stream = session.exec_stream("for i in 1 2 3; do echo $i; sleep 1; done")
        async for chunk in stream:
            print(chunk, end="")
        print(stream.exit_code)

    ``await stream.wait()`` reads what is left and returns the ``ExecResult`` (its
    ``output`` holds every chunk).
    """

    def __init__(self, client: SandboxClient, call: P.Call) -> None:
        self._client = client
        self._call = call
        self._events_gen: AsyncGenerator[str, None] | None = None
        self.result: ExecResult | None = None
        self._chunks: list[str] = []

    @property
    def exit_code(self) -> int | None:
        return self.result.exit_code if self.result else None

    def __aiter__(self) -> AsyncIterator[str]:
        """The chunks, once: a second iteration continues where the first stopped."""
        if self._events_gen is None:
            self._events_gen = self._events()
        return self._events_gen

    async def _events(self) -> AsyncGenerator[str, None]:
        async with self._client._stream(self._call) as resp:
            decoder = P.SSEDecoder()
            async for line in resp.aiter_lines():
                event = decoder.feed(line)
                if event is None:
                    continue
                item = P.stream_event(*event)
                if isinstance(item, ExecResult):
                    self.result = P.with_output(item, self._chunks)
                    return
                if item:
                    self._chunks.append(item)
                    yield item
            final = decoder.feed("")
            if final is not None:
                item = P.stream_event(*final)
                if isinstance(item, ExecResult):
                    self.result = P.with_output(item, self._chunks)
                    return
        raise P.stream_ended_early()

    async def aclose(self) -> None:
        """Stop reading (after a ``break``): closes the HTTP response at once."""
        if self._events_gen is not None:
            await self._events_gen.aclose()

    async def __aenter__(self) -> ExecStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def wait(self) -> ExecResult:
        """Consume the remaining output; return the result with all output joined."""
        async for _ in self:  # drain what is left (all of it, if nothing was read yet)
            pass
        if self.result is None:
            raise RuntimeError("the stream was closed before it finished")
        return self.result
