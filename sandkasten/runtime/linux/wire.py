"""The private wire between the daemon and its fork server: length-prefixed pickles.

Both ends are the same program on a socketpair nobody else holds, so pickle is safe here
and carries the spec and the cgroup object as they are.
"""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any

from sandkasten.runtime.base import SessionSpec

_LEN = struct.Struct(">I")
# Steps of a create and when they ended (time.perf_counter_ns, i.e. CLOCK_MONOTONIC, which
# every process on the host shares): what bench/profile_create.py prints.
Stamps = list[tuple[str, int]]


@dataclass
class CreateRequest:
    spec: SessionSpec
    session_dir: str
    cgroup: Any = None  # a cgroups.Cgroup (picklable): PID 1 joins it first


def send_obj(sock: socket.socket, obj: object) -> None:
    data = pickle.dumps(obj)
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_obj(sock: socket.socket) -> object | None:
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    body = _recv_exact(sock, _LEN.unpack(head)[0])
    return None if body is None else pickle.loads(body)  # noqa: S301 - private socketpair


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
