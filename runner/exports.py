"""Parse the output of a shell's ``export -p`` into an environment (pure, no I/O).

The persistent shell dumps its exported variables after every exec (see ``shell.py``), so
a split exec can start in the shell's environment without a round trip through the shell.
Formats understood::

    declare -x NAME="value"      bash (\\ escapes $ ` " \\ and newline inside "...")
    export NAME="value"          bash in POSIX mode
    export NAME='value'          busybox ash, dash ('\\'' for a quote inside)
    declare -x NAME              exported but unset: not in the environment

The dump ends with the line ``END_LINE``; a dump without it (a full /tmp, a write cut
short, a file the sandbox user replaced with something else) is rejected as a whole:
``parse_exports`` returns None and the caller falls back to asking the shell.
"""

from __future__ import annotations

END_LINE = "#sandkasten-exports-end"
_DQ_ESCAPES = "$`\"\\\n"


class _Unterminated(ValueError):
    pass


_SIMPLE = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "e": 27, "E": 27, "f": 12, "v": 11,
           "\\": 92, "'": 39, '"': 34, "?": 63}


def _ansi_c(text: str, i: int, cur: list[str]) -> int:
    """Decode bash's $'...' (from just after the opening quote); returns the index after."""
    out = bytearray()
    n = len(text)
    while True:
        if i >= n:
            raise _Unterminated("unterminated $'")
        c = text[i]
        if c == "'":
            cur.append(out.decode("utf-8", errors="replace"))
            return i + 1
        if c != "\\" or i + 1 >= n:
            out += c.encode()
            i += 1
            continue
        e = text[i + 1]
        i += 2
        if e in _SIMPLE:
            out.append(_SIMPLE[e])
        elif e in "01234567":
            j = i
            while j < n and j < i + 2 and text[j] in "01234567":
                j += 1
            out.append(int(text[i - 1:j], 8) & 0xFF)
            i = j
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            j = i
            while j < n and j < i + width and text[j] in "0123456789abcdefABCDEF":
                j += 1
            if j == i:
                out += ("\\" + e).encode()
                continue
            v = int(text[i:j], 16)
            out += bytes([v]) if e == "x" else chr(min(v, 0x10FFFF)).encode(errors="replace")
            i = j
        elif e == "c" and i < n:
            out.append(ord(text[i]) & 0x1F)
            i += 1
        else:
            out += ("\\" + e).encode()


def _words(text: str) -> list[list[str]]:
    """Shell words, grouped by unquoted newline; quotes removed, escapes applied."""
    stmts: list[list[str]] = []
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n" or c in " \t":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            if c == "\n" and words:
                stmts.append(words)
                words = []
            i += 1
        elif c == "$" and text.startswith("$'", i):
            i = _ansi_c(text, i + 2, cur)
            in_word = True
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise _Unterminated("unterminated '")
            cur.append(text[i + 1:end])
            in_word, i = True, end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise _Unterminated('unterminated "')
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in _DQ_ESCAPES:
                    if text[i + 1] != "\n":  # backslash-newline is a line continuation
                        cur.append(text[i + 1])
                    i += 2
                    continue
                cur.append(c)
                i += 1
            in_word = True
        elif c == "\\" and i + 1 < n:
            if text[i + 1] != "\n":
                cur.append(text[i + 1])
            in_word, i = True, i + 2
        else:
            cur.append(c)
            in_word, i = True, i + 1
    if in_word:
        words.append("".join(cur))
    if words:
        stmts.append(words)
    return stmts


def parse_exports(text: str) -> dict[str, str] | None:
    """The environment described by an ``export -p`` dump, or None if it is not complete."""
    body, sep, rest = text.rpartition("\n" + END_LINE + "\n")
    if not sep or rest:
        if text != END_LINE + "\n":
            return None
        body = ""
    try:
        stmts = _words(body)
    except _Unterminated:
        return None
    env: dict[str, str] = {}
    for words in stmts:
        if words[0] not in ("declare", "export", "typeset"):
            return None
        for w in words[1:]:
            if w.startswith("-"):
                continue
            name, eq, value = w.partition("=")
            if eq and name and (name[0].isalpha() or name[0] == "_") \
                    and all(ch.isalnum() or ch == "_" for ch in name):
                env[name] = value
    return env
