import pytest

from registry.transport import unreachable_hint


@pytest.mark.parametrize(("error", "insecure", "expect"), [
    ("ConnectError: [Errno -2] Name or service not known", False, "does not resolve"),
    ("ConnectError: [Errno -3] Temporary failure in name resolution", True, "does not resolve"),
    ("ConnectError: [Errno 111] Connection refused", False, "insecure_registries"),
    ("ConnectError: [Errno 111] Connection refused", True, None),
])
def test_hint_names_the_likely_fix(error: str, insecure: bool, expect: str | None) -> None:
    hint = unreachable_hint("reg.example:5000", error, insecure)
    if expect is None:
        assert hint is None
    else:
        assert hint is not None and expect in hint
