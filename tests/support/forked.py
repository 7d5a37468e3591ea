"""Run a function in a forked child (where a seccomp filter or dropped privileges cannot
leak into the test process) and get its JSON-able result back."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from typing import Any


def in_child(fn: Callable[[], Any], timeout: float = 60) -> Any:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            try:
                payload = {"ok": fn()}
            except BaseException as e:
                payload = {"error": f"{type(e).__name__}: {e}", "tb": traceback.format_exc()}
            os.write(w, json.dumps(payload).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child died: status {status}"
    result = json.loads(b"".join(chunks))
    if "error" in result:
        raise AssertionError(f"in child: {result['error']}\n{result['tb']}")
    return result["ok"]
