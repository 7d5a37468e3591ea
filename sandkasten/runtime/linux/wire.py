"""The private wire between the daemon and its fork server: length-prefixed pickles.

Both ends are the same program on a socketpair nobody else holds, so pickle is safe here
and carries the spec and the cgroup object as they are.
"""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sandkasten.runtime.base import SessionSpec
from sandkasten.runtime.linux import cgjoin
from sandkasten.runtime.linux import plan as pl

_LEN = struct.Struct(">I")
# Steps of a create and when they ended (time.perf_counter_ns, i.e. CLOCK_MONOTONIC, which
# every process on the host shares): what bench/profile_create.py prints.
Stamps = list[tuple[str, int]]


@dataclass
class CreateRequest:
    spec: SessionSpec
    session_dir: str
    cgroup: Any = None  # a cgroups.Cgroup (picklable): PID 1 joins it first


class Job(NamedTuple):
    """A create as the fork server sees it: what it records in state.json, and PID 1's
    part as an opaque pickle. Planning and pickling happen in the daemon: every page the
    fork server (or a PID 1) writes after a fork is a copy-on-write fault."""

    spec_id: str
    state_path: str
    cgroup: str | None
    cgroup_paths: dict[str, str] | None
    assignment: bytes  # pickle of (CreateRequest, the ops after Assign, v1 task files)


def make_job(req: CreateRequest, userns_base: int | None) -> Job:
    """Plan ``req`` (in the user namespace of ``userns_base``, None for none: what the fork
    server said at start-up); raises what ``plan.plan_session`` raises for a spec it
    cannot build."""
    paths = pl.SessionPaths(Path(req.session_dir))
    cg = req.cgroup
    ops = pl.plan_session(req.spec, paths, cg.name if cg else None, userns_base=userns_base)
    split = ops.index(pl.Assign())
    if ops[:split] != [pl.ForkPid1(), *pl.spare_plan()]:  # pragma: no cover - plan's contract
        raise AssertionError("the plan does not start with the spare's steps")
    blob = pickle.dumps((req, ops[split + 1:], cgjoin.v1_task_files(cg)))
    return Job(req.spec.id, str(paths.state), cg.name if cg else None,
               cg.paths() if cg else None, blob)


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
