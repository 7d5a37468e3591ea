"""sandkasten.yaml and SANDKASTEN_* variables: the seed's file, precedence, one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandkasten.config import load_config
from sandkasten.errors import ConfigError

SEED = """\
listen: "127.0.0.1:8080"
api_key: "sk-sandbox-test"
data_dir: "/var/lib/sandkasten"
default_image: "python"

defaults:
  cpu_limit: 1.0
  mem_limit_mb: 512
  pids_limit: 256
  network_mode: "none"
"""


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    p = tmp_path / "sandkasten.yaml"
    p.write_text(SEED)
    return p


def test_seed_config_loads(seed: Path) -> None:
    c = load_config(seed, {})
    assert (c.host, c.port, c.api_key) == ("127.0.0.1", 8080, "sk-sandbox-test")
    assert c.data_dir == Path("/var/lib/sandkasten")
    assert c.database_path == Path("/var/lib/sandkasten/sandkasten.db")
    assert c.default_image == "python"
    d = c.defaults
    assert (d.cpu_limit, d.mem_limit_mb, d.pids_limit, d.network_mode) == (1.0, 512, 256, "none")
    assert d.max_exec_timeout_ms == 120_000 and d.exec_mode == "stateful"
    assert c.session_ttl_seconds == 1800 and c.workspace.enabled and not c.pool.enabled
    assert c.security.seccomp == "mvp" and c.is_loopback()
    assert c.security.user_namespace == "auto" and c.security.userns_base == 0x70000000


def test_defaults_without_file() -> None:
    c = load_config(None, {})
    assert c.listen == "127.0.0.1:8080" and c.api_key == "" and c.allowed_images == []


@pytest.mark.parametrize(
    ("env", "check"),
    [
        ({"SANDKASTEN_API_KEY": "k2"}, lambda c: c.api_key == "k2"),
        ({"SANDKASTEN_LISTEN": "0.0.0.0:9000"}, lambda c: c.port == 9000 and not c.is_loopback()),
        ({"SANDKASTEN_DATA_DIR": "/srv/sk"}, lambda c: c.data_dir == Path("/srv/sk")),
        (
            {"SANDKASTEN_DEFAULTS__MEM_LIMIT_MB": "1024"},
            lambda c: c.defaults.mem_limit_mb == 1024 and c.defaults.pids_limit == 256,
        ),
        ({"SANDKASTEN_MEM_LIMIT_MB": "64"}, lambda c: c.defaults.mem_limit_mb == 64),
        ({"SANDKASTEN_SECCOMP": "off"}, lambda c: c.security.seccomp == "off"),
        (
            {"SANDKASTEN_SECURITY__USER_NAMESPACE": "off",
             "SANDKASTEN_SECURITY__USERNS_BASE": "200000"},
            lambda c: c.security.user_namespace == "off" and c.security.userns_base == 200000,
        ),
        (
            {"SANDKASTEN_ALLOWED_IMAGES": "python, node"},
            lambda c: c.allowed_images == ["python", "node"],
        ),
        ({"SANDKASTEN_ALLOWED_IMAGES": '["a"]'}, lambda c: c.allowed_images == ["a"]),
        (
            {"SANDKASTEN_POOL__ENABLED": "true", "SANDKASTEN_POOL__IMAGES": '{"python": 3}'},
            lambda c: c.pool.enabled and c.pool.images == {"python": 3},
        ),
        (
            {"SANDKASTEN_WORKSPACE__PERSIST_BY_DEFAULT": "1"},
            lambda c: c.workspace.persist_by_default,
        ),
        ({"SANDKASTEN_DB_PATH": "/x/state.db"}, lambda c: c.database_path == Path("/x/state.db")),
        ({"SANDKASTEN_SESSION_TTL_SECONDS": "60"}, lambda c: c.session_ttl_seconds == 60),
        (
            {"SANDKASTEN_REGISTRY_MIRRORS": "mirror.local:5000,https://m2"},
            lambda c: c.registry_mirrors == ["mirror.local:5000", "https://m2"],
        ),
        ({"SANDKASTEN_URL": "http://elsewhere"}, lambda c: c.api_key == "sk-sandbox-test"),
    ],
)
def test_environment_overrides_file(seed: Path, env: dict[str, str], check) -> None:  # type: ignore[no-untyped-def]
    assert check(load_config(seed, env))


@pytest.mark.parametrize(("text", "mode"), [
    ("user_namespace: off", "off"), ("user_namespace: on", "on"),
    ("user_namespace: 'off'", "off"), ("user_namespace: auto", "auto"),
])
def test_user_namespace_unquoted_on_off(tmp_path: Path, text: str, mode: str) -> None:
    p = tmp_path / "sandkasten.yaml"
    p.write_text(f"security:\n  {text}\n")
    assert load_config(p, {}).security.user_namespace == mode


@pytest.mark.parametrize(("text", "profile"), [
    ("seccomp: off", "off"), ("seccomp: 'off'", "off"), ("seccomp: strict", "strict"),
])
def test_seccomp_unquoted_off(tmp_path: Path, text: str, profile: str) -> None:
    p = tmp_path / "sandkasten.yaml"
    p.write_text(f"security:\n  {text}\n")
    assert load_config(p, {}).security.seccomp == profile


def test_seccomp_true_is_not_a_profile(tmp_path: Path) -> None:
    p = tmp_path / "sandkasten.yaml"
    p.write_text("security:\n  seccomp: on\n")
    with pytest.raises(Exception, match="seccomp"):
        load_config(p, {})


def test_config_env_variable_names_the_file(seed: Path) -> None:
    assert load_config(None, {"SANDKASTEN_CONFIG": str(seed)}).api_key == "sk-sandbox-test"


@pytest.mark.parametrize(
    ("text", "env", "key", "origin"),
    [
        ("defaults:\n  mem_limit_mb: lots\n", {}, "'defaults.mem_limit_mb'", "sandkasten.yaml"),
        ("defaultz: 1\n", {}, "'defaultz'", "unknown key"),
        ("defaults:\n  bogus: 1\n", {}, "'defaults.bogus'", "unknown key"),
        ("listen: nope\n", {}, "'listen'", "HOST:PORT"),
        ("listen: '1.2.3.4:99999'\n", {}, "'listen'", "port"),
        ("security:\n  seccomp: maybe\n", {}, "'security.seccomp'", "'off'"),
        ("security:\n  user_namespace: maybe\n", {}, "'security.user_namespace'", "'auto'"),
        ("security:\n  userns_base: 0\n", {}, "'security.userns_base'", "above 0"),
        ("", {"SANDKASTEN_SECURITY__USERNS_BASE": "4294960000"}, "'security.userns_base'",
         "4294967295"),
        ("defaults:\n  network_mode: bridge\n", {}, "'defaults.network_mode'", "'none'"),
        ("defaults:\n  cpu_limit: 0\n", {}, "'defaults.cpu_limit'", "greater than 0"),
        ("pool:\n  images: {python: 1000}\n", {}, "'pool.images'", "between 0 and 256"),
        (
            "",
            {"SANDKASTEN_DEFAULTS__PIDS_LIMIT": "x"},
            "'defaults.pids_limit'",
            "SANDKASTEN_DEFAULTS__PIDS_LIMIT",
        ),
        ("", {"SANDKASTEN_DEFAULTS__NOPE": "1"}, "'defaults.nope'", "unknown key"),
        ("", {"SANDKASTEN_SESSION_TTL_SECONDS": "-5"}, "'session_ttl_seconds'", "greater"),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], key: str, origin: str
) -> None:
    p = tmp_path / "sandkasten.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p, env)
    msg = str(ei.value)
    assert key in msg and origin in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("listen: [unclosed\n", "not valid YAML (line 2"), ("- a\n- b\n", "mapping")],
)
def test_broken_files(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "sandkasten.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(p, {})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", {})


def test_relative_data_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    c = load_config(None, {"SANDKASTEN_DATA_DIR": "data"})
    assert c.data_dir == tmp_path / "data"


@pytest.mark.parametrize(
    ("listen", "host", "port", "loopback"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("localhost:1", "localhost", 1, True),
        ("[::1]:80", "::1", 80, True),
        (":8080", "0.0.0.0", 8080, False),
        ("10.0.0.1:5", "10.0.0.1", 5, False),
        ("127.0.0.1:0", "127.0.0.1", 0, True),
    ],
)
def test_listen_forms(listen: str, host: str, port: int, loopback: bool) -> None:
    c = load_config(None, {"SANDKASTEN_LISTEN": listen})
    assert (c.host, c.port, c.is_loopback()) == (host, port, loopback)
