"""Pull + unpack from a cold store: sandkasten vs skopeo copy + umoci unpack vs GNU tar.

Starts a local docker-registry, pushes (a) the Debian bookworm + python3 rootfs made by
mmdebstrap as one gzip layer and (b) the same rootfs split into several gzip layers, then,
for each image and each repetition, from a cold (empty) store:

- ``sandkasten``: ``imgbuilder pull`` as a fresh process (interpreter start included);
- ``skopeo+umoci``: ``skopeo copy docker://… oci:DIR:tag`` then ``umoci unpack``;
- ``tar``: GNU tar extracting the same gzip layer(s) from local files (the floor: no
  network, no verification).

Prints the median of each and the ratio to skopeo+umoci. Run as root from the repository
root: ``.venv/bin/python bench/bench_pull.py [--reps 5]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.ocibuild import PushedImage, push_image
from tests.support.registry import LocalRegistry
from tests.support.rootfs import debian_python_tar

PULL = [sys.executable, "-c",
        "import typer; from imgbuilder.pull_cli import pull_command; typer.run(pull_command)"]


def split_tar(data: bytes, parts: int) -> list[bytes]:
    """Split a rootfs tar into ``parts`` layers by top-level subtree; directories go to all."""
    outs = [io.BytesIO() for _ in range(parts)]
    writers = [tarfile.open(fileobj=o, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
               for o in outs]  # closed below, after all members are added
    with tarfile.open(fileobj=io.BytesIO(data)) as src:
        for ti in src:
            key = "/".join(ti.name.lstrip("./").split("/")[:3])
            targets = range(parts) if ti.isdir() else [
                int(hashlib.sha256(key.encode()).hexdigest(), 16) % parts]
            if ti.islnk():
                targets = [int(hashlib.sha256("/".join(
                    ti.linkname.lstrip("./").split("/")[:3]).encode()).hexdigest(), 16) % parts]
            f = src.extractfile(ti) if ti.isreg() else None
            body = f.read() if f else None
            for i in targets:
                writers[i].addfile(ti, io.BytesIO(body) if body is not None else None)
    for w in writers:
        w.close()
    return [o.getvalue() for o in outs]


def timed(cmd: list[str], **kw: object) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t


def run_sandkasten(reg: LocalRegistry, ref: str, work: Path, *extra: str) -> float:
    data = work / "sk-data"
    subprocess.run(["sync"], check=True)  # earlier writeback must not leak into this one
    try:
        return timed([*PULL, "--quiet", "--data-dir", str(data), "--name", "bench", *extra,
                      ref])
    finally:
        shutil.rmtree(data, ignore_errors=True)


def run_skopeo_umoci(ref: str, work: Path) -> float:
    layout, bundle = work / "oci", work / "bundle"
    subprocess.run(["sync"], check=True)
    try:
        t = time.perf_counter()
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{ref}", f"oci:{layout}:bench"], check=True)
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", str(bundle)],
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(layout, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)


def run_tar(blobs: list[Path], work: Path) -> float:
    dest = work / "tar"
    subprocess.run(["sync"], check=True)
    try:
        t = time.perf_counter()
        for i, blob in enumerate(blobs):
            d = dest / str(i)
            d.mkdir(parents=True)
            subprocess.run(["tar", "--numeric-owner", "-xzf", str(blob), "-C", str(d)], check=True)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=5, help="layers of the multi-layer image")
    ap.add_argument("--dir", default="/var/tmp",
                    help="where stores and bundles go (a disk; /dev/shm for tmpfs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: layers keep owners and overlay whiteouts")
    rootfs = debian_python_tar().read_bytes()
    work = Path(tempfile.mkdtemp(prefix="bench-pull-", dir=args.dir))
    reg = LocalRegistry().start()
    try:
        single = push_image(reg, "bench/debian", "single", [rootfs])
        multi = push_image(reg, "bench/debian", "multi", split_tar(rootfs, args.layers))
        rows = []
        for label, image in (("debian+python3, 1 layer", single),
                             (f"debian+python3, {args.layers} layers", multi)):
            blobs = _write_blobs(image, work)
            ref = f"{reg.host}/{image.repo}:{image.tag}"
            results: dict[str, list[float]] = {"sandkasten": [], "sandkasten --no-fsync": [],
                                               "skopeo+umoci": [], "tar": []}
            for _ in range(args.reps):
                results["sandkasten"].append(run_sandkasten(reg, ref, work))
                results["sandkasten --no-fsync"].append(
                    run_sandkasten(reg, ref, work, "--no-fsync"))
                results["skopeo+umoci"].append(run_skopeo_umoci(ref, work))
                results["tar"].append(run_tar(blobs, work))
            med = {k: statistics.median(v) for k, v in results.items()}
            size = sum(len(b) for b in image.blobs.values())
            rows.append((label, size, med, results))
        print(f"\nmachine: {os.cpu_count()} CPUs, {_cpu_model()}, kernel {os.uname().release}")
        print(f"repetitions: {args.reps} (median), rootfs {len(rootfs) / 1e6:.0f} MB tar, "
              f"target {args.dir} ({_fstype(work)}), load average {os.getloadavg()[0]:.1f}\n")
        print(f"{'image':<28} {'gzip MB':>8} {'sandkasten':>11} {'--no-fsync':>11} "
              f"{'skopeo+umoci':>13} {'GNU tar':>8} {'ratio':>6}")
        for label, size, med, _ in rows:
            ratio = med["sandkasten"] / med["skopeo+umoci"]
            print(f"{label:<28} {size / 1e6:>8.1f} {med['sandkasten']:>10.2f}s "
                  f"{med['sandkasten --no-fsync']:>10.2f}s "
                  f"{med['skopeo+umoci']:>12.2f}s {med['tar']:>7.2f}s {ratio:>6.2f}")
        for label, _, _, results in rows:
            print(f"\n{label}: " + "; ".join(
                f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in results.items()))
    finally:
        reg.close()
        shutil.rmtree(work, ignore_errors=True)


def _write_blobs(image: PushedImage, work: Path) -> list[Path]:
    out = []
    for digest in image.layer_digests:
        p = work / f"{digest[7:]}.tar.gz"
        p.write_bytes(image.blobs[digest])
        out.append(p)
    return out


def _fstype(path: Path) -> str:
    best, fstype = "", "?"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if str(path).startswith(parts[1]) and len(parts[1]) >= len(best):
            best, fstype = parts[1], parts[2]
    return fstype


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
