"""Operator commands: ``sandkasten init``, ``doctor``, ``security`` (and ``mcp``, from
:mod:`sandkasten.mcp`).

Errors a user can cause print one ``error: ...`` line (and a ``hint:``) on stderr and exit
1, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from imgbuilder.errors import ImageError
from sandkasten.cli import _checks as C
from sandkasten.cli import _init as I
from sandkasten.mcp import mcp_command

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="config file (default: $SANDKASTEN_CONFIG, else ./sandkasten.yaml)")]


def _fail(message: str, hint: str = "") -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return typer.Exit(1)


def _say(text: str) -> None:
    print(f"init: {text}", flush=True)


def init(
    config: ConfigOpt = None,
    listen: Annotated[str, typer.Option(help="address the daemon listens on")] =
        "127.0.0.1:8080",
    data_dir: Annotated[str, typer.Option(help="data directory (Linux filesystem)")] =
        I.DEFAULT_DATA_DIR,
    image: Annotated[str, typer.Option(help="name of the default image")] =
        I.DEFAULT_IMAGE_NAME,
    image_ref: Annotated[str, typer.Option(help="what to pull for it")] = I.DEFAULT_IMAGE_REF,
    force: Annotated[bool, typer.Option(help="replace an existing config (new key)")] = False,
    offline: Annotated[bool, typer.Option(help="do not try a registry: build the image "
                                                "from Debian packages")] = False,
    no_image: Annotated[bool, typer.Option("--no-image", help="skip the image step")] = False,
) -> None:
    """Write a config with a random API key, create the data directories, prepare the
    default image. Safe to run again: an existing config and image are kept."""
    path = config or I.default_config_path()
    if path.exists() and not force:
        cfg = I.read_config(path)
        _say(f"keeping the existing config {path} (--force writes a new one)")
    else:
        try:
            I.write_config(path, listen=listen, data_dir=data_dir, image=image)
        except OSError as e:
            raise _fail(f"cannot write {path}: {e.strerror}",
                        "run as root (sudo) or pass --config ./sandkasten.yaml") from None
        cfg = I.read_config(path)
        _say(f"wrote {path} (mode 0600, random api_key)")
    ddir = Path(str(cfg.get("data_dir") or data_dir))
    fs = C.check_data_dir_fs(str(ddir), C.mount_for(str(ddir.resolve()),
                                                    C.host_facts()["mounts"]))
    if fs.status == "fail":
        raise _fail(fs.detail, fs.fix)
    try:
        I.make_data_dirs(ddir)
    except OSError as e:
        raise _fail(f"cannot create {ddir}: {e.strerror}", "run as root (sudo)") from None
    _say(f"data directory {ddir} ready ({', '.join(I.DATA_SUBDIRS)})")
    if not no_image:
        name = str(cfg.get("default_image") or image)
        if name != I.DEFAULT_IMAGE_NAME and image_ref == I.DEFAULT_IMAGE_REF and \
                not I.image_present(ddir, name):
            raise _fail(f"the default image {name!r} is not in the store, and {image_ref} "
                        "is a python image", f"pass --image-ref REF for it, or run sudo "
                        f"sandkasten image pull --name {name} REF")
        try:
            how = I.prepare_image(ddir, name, image_ref, _say, offline=offline)
        except ImageError as e:
            raise _fail(f"preparing the image failed: {e}", e.hint or "check access to the "
                        "Debian mirror, then run sandkasten init again") from None
        _say({"present": f"default image {name!r}: already there",
              "pulled": f"default image {name!r}: pulled {image_ref}",
              "bootstrapped": f"default image {name!r}: built from Debian packages "
                              "(mmdebstrap)"}[how])
    _say(f"done. Start the daemon: sudo sandkasten daemon -d --config {path}")


def _load(config: Path | None) -> tuple[Path, dict[str, object]]:
    path = config or I.default_config_path()
    try:
        return path, I.read_config(path)
    except (OSError, ValueError) as e:
        raise _fail(f"cannot read {path}: {e}") from None


def doctor(config: ConfigOpt = None) -> None:
    """Check this host for what sandboxes need; one line per check with the fix."""
    from sandkasten.wsl import in_wsl

    path, cfg = _load(config)
    facts = C.host_facts()
    ddir = str(cfg.get("data_dir") or I.DEFAULT_DATA_DIR)
    existing = Path(ddir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    listen = str(cfg.get("listen") or "127.0.0.1:8080")
    host, _, port = listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host  # noqa: S104
    checks = [
        C.check_kernel(facts["release"]),
        C.check_cgroups(C.cgroup_facts(facts["mounts"], facts["v2_controllers"])),
        C.check_overlay_support(facts["filesystems"]),
        C.check_data_dir_fs(ddir, C.mount_for(str(existing.resolve()), facts["mounts"])),
        C.probe_overlay(Path(ddir)),
        C.check_userns(*C.userns_settings(cfg),
                       C.probe_userns(Path(ddir), *C.userns_settings(cfg))),
        C.check_wsl(facts["release"], in_wsl()),
        C.check_root(os.geteuid()),
        C.check_health(f"http://{host}:{port or 8080}/healthz"),
    ]
    print(f"sandkasten doctor (config: {path}{'' if path.exists() else ', not found'})")
    for c in checks:
        print(c.line())
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


def security(config: ConfigOpt = None) -> None:
    """The hardening baseline of a config: key, listen address, seccomp, user namespace,
    limits, files."""
    path, cfg = _load(config)
    if not path.exists():
        raise _fail(f"{path} does not exist", "sandkasten init writes one")
    ddir = Path(str(cfg.get("data_dir") or I.DEFAULT_DATA_DIR))
    run = ddir / "run"
    logs = {str(p): p.stat().st_mode for p in run.glob("*.log")} if run.is_dir() else {}
    checks = C.security_checks(
        cfg, config_mode=path.stat().st_mode,
        data_dir_stat=ddir.stat() if ddir.exists() else None, log_modes=logs,
    )
    checks.append(C.check_userns(*C.userns_settings(cfg),
                                 C.probe_userns(ddir, *C.userns_settings(cfg))))
    print(f"sandkasten security ({path})")
    for c in checks:
        print(c.line())
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("doctor")(doctor)
    app.command("security")(security)
    app.command("mcp")(mcp_command)
