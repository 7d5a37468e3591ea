"""The runner protocol: typed messages and their framing, shared by daemon and runner.

Sans-IO: ``encode(msg) -> bytes`` and ``Decoder.feed(bytes) -> [msg]``; no socket here, so
both ends and the tests drive the same code in memory.

Framing: every frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON, an object whose ``"t"`` names the message type. Binary data (file contents) travels
base64-encoded in ``data_b64``. A frame over ``MAX_FRAME`` is a protocol error: a peer can
never make the other side allocate without bound.

Conversation: a client sends one request on a connection and reads frames until the final
reply (``ExecDone``, ``SplitDone``, ``Written``, ``FileData``, ``Listing``, ``Pong``,
``Ok`` or ``Error``); ``ExecStream`` replies ``Chunk`` frames first. Concurrent requests use
separate connections; the runner serialises execs per shell and lets file requests run
alongside.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import asdict, dataclass, field, fields

MAX_FRAME = 64 << 20  # 64 MiB: a 1 MiB output cap and base64 file data fit with room
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A malformed, oversized or unknown frame: the connection cannot continue."""


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exec:
    """Run ``cmd`` in the session's shell; combined output (PTY)."""

    cmd: str
    timeout_ms: int | None = None
    raw_output: bool = False
    max_output: int = 1 << 20


@dataclass(frozen=True)
class ExecStream:
    """Like ``Exec`` but output arrives as ``Chunk`` frames before the final ``ExecDone``."""

    cmd: str
    timeout_ms: int | None = None
    raw_output: bool = False
    max_output: int = 1 << 20


@dataclass(frozen=True)
class ExecSplit:
    """Run ``cmd`` as a plain child (no PTY) in the shell's cwd and exported environment."""

    cmd: str
    timeout_ms: int | None = None
    max_output: int = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    path: str
    data_b64: str
    mode: int = 0o644


@dataclass(frozen=True)
class WriteFiles:
    """Write one or more files (parents created). Relative paths resolve against /workspace."""

    files: list[FileSpec]


@dataclass(frozen=True)
class ReadFile:
    path: str
    max_bytes: int | None = None


@dataclass(frozen=True)
class ListDir:
    path: str


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Shutdown:
    """Stop every process in the sandbox; PID 1 exits, which ends the pid namespace."""


# --- replies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    data: str


@dataclass(frozen=True)
class ExecDone:
    exit_code: int
    cwd: str
    output: str
    truncated: bool
    duration_ms: int
    timed_out: bool = False


@dataclass(frozen=True)
class SplitDone:
    exit_code: int
    cwd: str
    stdout: str
    stderr: str
    truncated: bool
    duration_ms: int
    timed_out: bool = False


@dataclass(frozen=True)
class Written:
    paths: list[str]


@dataclass(frozen=True)
class FileData:
    data_b64: str
    truncated: bool


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    type: str  # file | dir | symlink | other
    size: int
    mode: int
    mtime: float


@dataclass(frozen=True)
class Listing:
    entries: list[Entry]


@dataclass(frozen=True)
class Pong:
    pid: int  # the runner's pid in its own namespace (1 inside a sandbox)
    shell: str
    exec_mode: str


@dataclass(frozen=True)
class Ok:
    pass


@dataclass(frozen=True)
class Error:
    """A request that failed; ``code`` is stable (not_found, invalid, busy, internal...)."""

    code: str
    message: str


Message = (
    Exec | ExecStream | ExecSplit | WriteFiles | ReadFile | ListDir | Ping | Shutdown
    | Chunk | ExecDone | SplitDone | Written | FileData | Listing | Pong | Ok | Error
)

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Exec, ExecStream, ExecSplit, WriteFiles, ReadFile, ListDir, Ping, Shutdown,
                Chunk, ExecDone, SplitDone, Written, FileData, Listing, Pong, Ok, Error)
}
# nested dataclass lists: field name -> element type
_NESTED: dict[tuple[str, str], type] = {("WriteFiles", "files"): FileSpec,
                                        ("Listing", "entries"): Entry}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:
        raise ProtocolError(f"bad base64 data: {e}") from None


def to_dict(msg: Message) -> dict[str, object]:
    d = asdict(msg)
    d["t"] = type(msg).__name__
    return d


def from_dict(d: object) -> Message:
    """Build a message from a decoded JSON object; rejects unknown types and fields."""
    if not isinstance(d, dict) or not isinstance(d.get("t"), str):
        raise ProtocolError("frame is not a typed message object")
    name = d["t"]
    cls = _TYPES.get(name)
    if cls is None:
        raise ProtocolError(f"unknown message type {name!r}")
    kwargs: dict[str, object] = {}
    known = {f.name for f in fields(cls)}
    for key, value in d.items():
        if key == "t":
            continue
        if key not in known:
            raise ProtocolError(f"unknown field {key!r} in {name}")
        elem = _NESTED.get((name, key))
        if elem is not None:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ProtocolError(f"{name}.{key} must be a list of objects")
            try:
                value = [elem(**v) for v in value]
            except TypeError as e:
                raise ProtocolError(f"bad {name}.{key}: {e}") from None
        kwargs[key] = value
    try:
        return cls(**kwargs)  # type: ignore[no-any-return,unused-ignore]
    except TypeError as e:
        raise ProtocolError(f"bad {name}: {e}") from None


def encode(msg: Message) -> bytes:
    """One frame: length prefix + JSON body."""
    body = json.dumps(to_dict(msg), separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


@dataclass
class Decoder:
    """Incremental frame decoder: ``feed`` bytes as they arrive, get whole messages back."""

    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < _HEADER.size + size:
                break
            body = bytes(self._buf[_HEADER.size:_HEADER.size + size])
            del self._buf[:_HEADER.size + size]
            try:
                obj = json.loads(body)
            except ValueError as e:  # includes UnicodeDecodeError
                raise ProtocolError(f"frame is not JSON: {e}") from None
            out.append(from_dict(obj))
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back; non-zero at EOF means a truncated frame."""
        return len(self._buf)


FINAL_REPLIES = (ExecDone, SplitDone, Written, FileData, Listing, Pong, Ok, Error)
