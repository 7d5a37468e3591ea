"""The runner protocol: framing and typed messages, in memory (sans-IO)."""

from __future__ import annotations

import json
import struct

import pytest

from runner import protocol as p
from runner.output import Capped, StreamCleaner, clean

MESSAGES: list[p.Message] = [
    p.Exec(cmd="echo hi", timeout_ms=100, raw_output=True, max_output=10),
    p.ExecStream(cmd="ls"),
    p.ExecSplit(cmd="false", timeout_ms=None),
    p.WriteFiles(files=[p.FileSpec(path="a", data_b64=p.b64(b"\0\xff"), mode=0o600)]),
    p.ReadFile(path="/etc/hosts", max_bytes=3),
    p.ListDir(path="."),
    p.Ping(),
    p.Shutdown(),
    p.Chunk(data="héllo\n"),
    p.ExecDone(exit_code=1, cwd="/w", output="x", truncated=True, duration_ms=3,
               timed_out=True),
    p.SplitDone(exit_code=0, cwd="/", stdout="o", stderr="e", truncated=False, duration_ms=1),
    p.Written(paths=["/workspace/a"]),
    p.FileData(data_b64=p.b64(b"abc"), truncated=False),
    p.Listing(entries=[p.Entry("a", "/a", "file", 1, 0o644, 1.5)]),
    p.Pong(pid=1, shell="/bin/sh", exec_mode="stateful"),
    p.Ok(),
    p.Error(code="not_found", message="nope"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_whole_and_byte_by_byte(msg: p.Message) -> None:
    frame = p.encode(msg)
    assert p.Decoder().feed(frame) == [msg]
    dec = p.Decoder()
    got = []
    for i in range(len(frame)):
        got += dec.feed(frame[i:i + 1])
    assert got == [msg] and dec.pending == 0


def test_several_frames_in_one_read() -> None:
    data = b"".join(p.encode(m) for m in MESSAGES)
    assert p.Decoder().feed(data) == MESSAGES


def test_incomplete_frame_is_held_back() -> None:
    frame = p.encode(p.Ping())
    dec = p.Decoder()
    assert dec.feed(frame[:-1]) == []
    assert dec.pending == len(frame) - 1


def _frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("data, why", [
    (struct.pack(">I", p.MAX_FRAME + 1), "exceeds"),
    (struct.pack(">I", 3) + b"{x}", "not JSON"),
    (struct.pack(">I", 2) + b"\xff\xfe", "not JSON"),
    (_frame([1, 2]), "not a typed message"),
    (_frame({"t": "Nope"}), "unknown message type"),
    (_frame({"t": "Exec"}), "bad Exec"),
    (_frame({"t": "Exec", "cmd": "x", "evil": 1}), "unknown field"),
    (_frame({"t": "WriteFiles", "files": "x"}), "list of objects"),
    (_frame({"t": "WriteFiles", "files": [{"path": "a"}]}), "bad WriteFiles.files"),
])
def test_bad_frames_are_protocol_errors(data: bytes, why: str) -> None:
    with pytest.raises(p.ProtocolError, match=why):
        p.Decoder().feed(data)


def test_bad_base64_is_a_protocol_error() -> None:
    with pytest.raises(p.ProtocolError):
        p.unb64("not base64!")


@pytest.mark.parametrize("raw_bytes, raw, expected", [
    (b"a\r\nb\r\n", False, "a\nb\n"),
    (b"a\r\r\nb", False, "a\nb"),
    (b"\x1b[31mred\x1b[0m\r\n", False, "red\n"),
    (b"\x1b[31mred\x1b[0m", True, "\x1b[31mred\x1b[0m"),
    (b"\x1b]0;title\x07text", False, "text"),
    (b"\xff ok", False, "\ufffd ok"),
    (b"100%\x1b[K", False, "100%"),
])
def test_clean(raw_bytes: bytes, raw: bool, expected: str) -> None:
    assert clean(raw_bytes, raw) == expected


def test_stream_cleaner_joins_split_sequences() -> None:
    whole = "é\x1b[1mbold\x1b[0m\r\nnext\r\n".encode()
    for cut in range(len(whole) + 1):
        sc = StreamCleaner(raw=False)
        text = sc.feed(whole[:cut]) + sc.feed(whole[cut:]) + sc.feed(b"", final=True)
        assert text == "ébold\nnext\n", cut


def test_capped_keeps_the_first_bytes_and_flags() -> None:
    c = Capped(5)
    assert c.add(b"abc") == b"abc" and not c.truncated
    assert c.add(b"defg") == b"de" and c.truncated
    assert c.add(b"h") == b"" and bytes(c.buf) == b"abcde"
