"""The ``imgbuilder`` command and the ``sandkasten image`` group (one implementation).

Each command is a plain function registered on both apps where the seed's names need it:
``imgbuilder import|list|validate|delete|inspect|export|mount|umount|prune|bootstrap`` and
``sandkasten image list|inspect|validate|rm|prune|export|mount|umount`` (``pull`` comes from
:mod:`imgbuilder.pull_cli`). Failures print one ``error:`` line (and a ``hint:``) on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from imgbuilder.cli_common import (
    ConfigOption,
    DataDirOption,
    errors,
    fail,
    human_size,
    open_store,
    require_root,
)
from imgbuilder.flatten import export_tar, flatten_image, max_layers
from imgbuilder.fscheck import check_layer_filesystem
from imgbuilder.images import ImageRecord, validate_name

app = typer.Typer(
    name="imgbuilder",
    help="Build, import and manage Sandkasten images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

NameArg = Annotated[str, typer.Argument(help="Image name, as shown by `image list`.")]


def _summary(rec: ImageRecord) -> dict[str, object]:
    return {"name": rec.name, "reference": rec.reference, "digest": rec.digest,
            "size": rec.size, "layers": len(rec.layers), "created": rec.created,
            "source": rec.source, "platform": rec.platform, "flattened": rec.flattened}


@errors
def import_command(
    name: Annotated[str, typer.Option("--name", help="Name to store the image under.")],
    tar: Annotated[str, typer.Option(
        "--tar", help="docker export tarball (.tar/.tar.gz/.tgz/.tar.zst, or - for stdin), "
        "docker save archive, or OCI layout (directory or tarball).")],
    ref: Annotated[str | None, typer.Option(
        "--ref", help="Which image of a multi-image archive or layout (tag or ref name).")] = None,
    platform: Annotated[str | None, typer.Option(
        "--platform", help="Platform to pick from a multi-platform layout, e.g. linux/arm64."
    )] = None,
    flatten: Annotated[bool, typer.Option(
        "--flatten", help="Store the image as one layer with all layers merged.")] = False,
    fsync: Annotated[bool, typer.Option(
        "--fsync/--no-fsync", help="Flush layers to disk before publishing them (survives a "
        "power loss; --no-fsync still survives a crash or kill).")] = True,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Import a rootfs tarball, docker save archive or OCI layout as image NAME."""
    from imgbuilder.tarball import import_image

    validate_name(name)
    require_root("importing an image (file owners, device nodes, trusted xattrs)")
    store = open_store(data_dir, config)
    check_layer_filesystem(store.layers_dir)
    with store.shared_lock():
        rec = import_image(store, tar, name, ref=ref, plat=platform, sync=fsync)
        rec.name = name
        if flatten or len(rec.layers) > max_layers(store):
            rec = flatten_image(store, rec, sync=fsync)
        store.write_image(rec)
    print(f"imported {name}: {len(rec.layers)} layer(s), {human_size(rec.size)}, "
          f"digest {rec.digest}")


@errors
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """List images: name, reference, digest, size, layers, created."""
    images = open_store(data_dir, config).list_images()
    if as_json:
        print(json.dumps([_summary(r) for r in images], indent=2))
        return
    if not images:
        print("no images; add one with `sandkasten image pull --name python python:3.12-slim` "
              "or `imgbuilder import --name python --tar /tmp/python.tar.gz`", file=sys.stderr)
        return
    rows = [("NAME", "REFERENCE", "DIGEST", "SIZE", "LAYERS", "CREATED")]
    for r in images:
        digest = (r.digest or "")[:19]
        rows.append((r.name, r.reference or "-", digest, human_size(r.size), str(len(r.layers)),
                     r.created or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@errors
def inspect_command(name: NameArg, data_dir: DataDirOption = None,
                    config: ConfigOption = None) -> None:
    """Print an image's record as JSON (config, layers, digests, layer paths)."""
    store = open_store(data_dir, config)
    rec = store.get_image(name)
    out = rec.to_dict()
    out["digest"], out["size"] = rec.digest, rec.size
    out["layer_paths"] = [str(store.layer_path(layer.diff_id)) for layer in rec.layers]
    print(json.dumps(out, indent=2))


@errors
def validate_command(name: NameArg, data_dir: DataDirOption = None,
                     config: ConfigOption = None) -> None:
    """Check an image: layers present, records consistent, blobs re-hashed."""
    from imgbuilder.validate import validate_image

    store = open_store(data_dir, config)
    rec = store.get_image(name)
    problems = validate_image(store, rec)
    for p in problems:
        print(f"  {p}")
    if problems:
        fail(f"image {name} is invalid ({len(problems)} problem(s) above)",
             hint=f"pull or import it again, e.g. imgbuilder import --name {name} --tar FILE")
    print(f"ok: {name} ({len(rec.layers)} layer(s), {human_size(rec.size)})")


@errors
def delete_command(name: NameArg, data_dir: DataDirOption = None,
                   config: ConfigOption = None) -> None:
    """Remove an image's record; `prune` frees layers no image uses."""
    store = open_store(data_dir, config)
    with store.exclusive_lock():
        store.delete_image(name)
    print(f"deleted {name} (run `imgbuilder prune` to free unused layers)")


@errors
def prune_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove layers and blobs no image references (never those of running sessions)."""
    report = open_store(data_dir, config).prune()
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    print(f"removed {len(report.layers_removed)} layer(s), {len(report.blobs_removed)} blob(s), "
          f"{report.partial_removed} partial download(s); freed {human_size(report.bytes_freed)}")


@errors
def export_command(
    name: NameArg,
    output: Annotated[str, typer.Option("-o", "--output",
                                        help="Tar file to write (- for stdout).")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the image's merged root filesystem as one tar (like `crane export`)."""
    store = open_store(data_dir, config)
    rec = store.get_image(name)
    if output == "-":
        export_tar(store, rec, sys.stdout.buffer)
        return
    out = Path(output)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            export_tar(store, rec, f)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(f"exported {name} to {out}", file=sys.stderr)


@errors
def mount_command(
    name: NameArg,
    directory: Annotated[Path, typer.Argument(help="Existing empty directory to mount on.")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Mount the image's merged view read-only on DIRECTORY (needs root)."""
    from imgbuilder.mount import mount_image

    require_root("mounting an image")
    store = open_store(data_dir, config)
    mount_image(store, store.get_image(name), directory)
    print(f"mounted {name} read-only on {directory}; `sandkasten image umount {directory}` "
          "to undo")


@errors
def umount_command(
    directory: Annotated[Path, typer.Argument(help="Directory an image is mounted on.")],
) -> None:
    """Unmount a view made by `image mount` (needs root)."""
    from imgbuilder.mount import umount

    require_root("unmounting an image")
    umount(directory)
    print(f"unmounted {directory}")


@errors
def bootstrap_command(
    name: Annotated[str, typer.Option("--name", help="Name to store the image under.")],
    suite: Annotated[str, typer.Option("--suite", help="Debian or Ubuntu suite.")] = "bookworm",
    include: Annotated[str, typer.Option(
        "--include", help="Comma-separated extra packages, e.g. python3,git.")] = "python3",
    mirror: Annotated[str | None, typer.Option(
        "--mirror", help="Package mirror URL (default: mmdebstrap's choice for the suite).")
    ] = None,
    variant: Annotated[str, typer.Option("--variant", help="mmdebstrap variant.")] = "minbase",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Build an image from Debian/Ubuntu packages with mmdebstrap (no registry, no Docker)."""
    from imgbuilder.bootstrap import bootstrap_image

    validate_name(name)
    require_root("bootstrapping an image (mmdebstrap as root, file owners)")
    store = open_store(data_dir, config)
    check_layer_filesystem(store.layers_dir)
    packages = [p.strip() for p in include.split(",") if p.strip()]
    with store.shared_lock():
        rec = bootstrap_image(store, name, suite=suite, packages=packages, mirror=mirror,
                              variant=variant)
        store.write_image(rec)
    print(f"bootstrapped {name} from {suite}: {human_size(rec.size)}, digest {rec.digest}")


app.command("import")(import_command)
app.command("list")(list_command)
app.command("inspect")(inspect_command)
app.command("validate")(validate_command)
app.command("delete")(delete_command)
app.command("rm", hidden=True)(delete_command)
app.command("export")(export_command)
app.command("mount")(mount_command)
app.command("umount")(umount_command)
app.command("prune")(prune_command)
app.command("bootstrap")(bootstrap_command)

image_app.command("list")(list_command)
image_app.command("inspect")(inspect_command)
image_app.command("validate")(validate_command)
image_app.command("rm")(delete_command)
image_app.command("delete", hidden=True)(delete_command)
image_app.command("prune")(prune_command)
image_app.command("export")(export_command)
image_app.command("mount")(mount_command)
image_app.command("umount")(umount_command)
image_app.command("import")(import_command)


def main() -> None:
    app()
