"""Turning terminal bytes into the text an exec returns.

Pure functions: line endings normalised (CRLF and lone CR before LF become LF), ANSI/VT
escape sequences removed unless the caller asks for raw output, and a byte cap that
flags truncation. ``StreamCleaner`` does the same incrementally for streaming execs,
holding back the bytes of a sequence that a chunk boundary split.
"""

from __future__ import annotations

import codecs
import re

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), other two-byte escapes, and lone C1 CSI.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[PX^_][^\x1b]*\x1b\\"
    r"|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)


_CRLF = re.compile(r"\r+\n")  # a program's own \r\n becomes \r\r\n on the PTY


def clean(data: bytes, raw: bool) -> str:
    """Decode terminal output: UTF-8 (invalid bytes replaced), LF endings, escapes stripped."""
    text = _CRLF.sub("\n", data.decode("utf-8", errors="replace"))
    if raw:
        return text
    return _ANSI.sub("", text)


class Capped:
    """A byte buffer that keeps the first ``limit`` bytes and remembers it dropped more."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.buf = bytearray()
        self.truncated = False

    def add(self, data: bytes) -> bytes:
        """Append; returns the part that was kept (for streaming)."""
        room = self.limit - len(self.buf)
        if len(data) > room:
            self.truncated = True
            data = data[:max(room, 0)]
        self.buf += data
        return data


class StreamCleaner:
    """Incremental ``clean``: feed bytes, get text that is safe to emit now."""

    def __init__(self, raw: bool) -> None:
        self.raw = raw
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self._pending + self._dec.decode(data, final)
        self._pending = ""
        if not final:
            # hold back a trailing CR (maybe half of CRLF) and an unfinished escape sequence
            cut = len(text)
            esc = text.rfind("\x1b", max(0, len(text) - 64))
            if esc != -1 and not self.raw and _ANSI.match(text, esc) is None:
                cut = esc
            while cut > 0 and text[cut - 1] == "\r":
                cut -= 1
            text, self._pending = text[:cut], text[cut:]
        text = _CRLF.sub("\n", text)
        return text if self.raw else _ANSI.sub("", text)
