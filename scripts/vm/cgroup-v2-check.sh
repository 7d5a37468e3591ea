#!/usr/bin/env bash
# Prove the cgroup v2 code on a real pure-cgroup-v2 kernel: boot a Debian bookworm VM (qemu,
# KVM when /dev/kvm works, else TCG) with systemd as PID 1 and
#   systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all
# (the seed guide's .wslconfig fix), and run the cgroup and runtime-limit tests inside it as
# the systemd service sk-check.service with Delegate=yes, so the test process sits in the
# nested cgroup /system.slice/sk-check.service exactly like a daemon on Ubuntu 24.04.
#
#   sudo scripts/vm/cgroup-v2-check.sh                  # the default test selection
#   sudo scripts/vm/cgroup-v2-check.sh tests/privileged/test_cgroups_v2_host.py -k oom
#
# Exit status: pytest's inside the VM (124 when the VM timed out, 2 for a setup failure).
# Idempotent: the kernel, rootfs image and wheels are built once under $SANDKASTEN_VM_CACHE
# (default /var/cache/sandkasten-vm; delete it to rebuild). The VM has no network device;
# the project tree is shared read-only over virtio-9p and copied onto the VM's ext4 root
# (overlayfs cannot use 9p as an upper dir); results come back through a second 9p share.
# Environment: VM_DELEGATE=no (run pytest in a transient unit without Delegate=yes),
# VM_MEM (MiB, 3072), VM_CPUS (2), VM_TIMEOUT (s, 2400), VM_ACCEL (kvm|tcg),
# VM_KEEP_OUT=1 (keep the results dir: pytest.txt, env.txt).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${SANDKASTEN_VM_CACHE:-/var/cache/sandkasten-vm}
TEST_CACHE=${SANDKASTEN_TEST_CACHE:-/var/cache/sandkasten-tests}
SUITE=bookworm
MEM=${VM_MEM:-3072}
CPUS=${VM_CPUS:-2}
TIMEOUT=${VM_TIMEOUT:-2400}
DEFAULT_TESTS=(
    tests/privileged/test_cgroups_v2_host.py
    tests/privileged/test_cgroups_v2_mechanics.py
    tests/privileged/test_cgroups_limits.py
    tests/privileged/test_runtime_cgjoin.py
    tests/privileged/test_runtime_debian.py
    tests/privileged/test_runtime_lifecycle.py
    tests/privileged/test_runtime_sessions.py
    tests/privileged/test_runtime_spare.py
    tests/privileged/test_runtime_userns.py
)

die() { echo "cgroup-v2-check: $*" >&2; exit 2; }
log() { echo "cgroup-v2-check: $*" >&2; }
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap, mkfs.ext4 -d and 9p shares of root-owned files)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one build and one VM at a time

# -- 1. qemu ---------------------------------------------------------------------------------
if ! command -v qemu-system-x86_64 >/dev/null; then
    log "installing qemu-system-x86"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86 \
        >/dev/null || die "cannot install qemu-system-x86"
fi
for t in mmdebstrap mkfs.ext4 python3; do
    command -v "$t" >/dev/null || die "$t is missing"
done

# -- 2. the project's Python dependencies as cp311 wheels (built on the host: same Debian) --
if [ ! -e "$CACHE/wheels/.complete" ]; then
    log "building wheels for the project's dependencies"
    rm -rf "$CACHE/wheels"
    mkdir -p "$CACHE/wheels"
    python3 - "$REPO/pyproject.toml" >"$CACHE/wheels/requirements.txt" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
# runtime dependencies plus the test runner (linters and schemathesis are not needed here)
for req in p["dependencies"] + ["pytest>=8", "pytest-timeout>=2.3"]:
    print(req)
EOF
    python3 -m pip wheel --quiet -w "$CACHE/wheels" -r "$CACHE/wheels/requirements.txt" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
    [ "${PIPESTATUS[0]}" = 0 ] || die "pip wheel failed"
    touch "$CACHE/wheels/.complete"
fi

# -- 3. rootfs with systemd, a Debian kernel and its initramfs -------------------------------
IMG=$CACHE/root.img
IMAGE_VERSION=2 # bump when the image's contents change: the next run rebuilds it
if [ "$(cat "$CACHE/.image-complete" 2>/dev/null)" != "$IMAGE_VERSION" ]; then
    log "building the $SUITE rootfs (mmdebstrap, a few minutes)"
    ROOT=$CACHE/rootfs
    rm -rf "$ROOT" "$IMG"
    # linux-image-amd64 is installed in the rootfs so that its initramfs (initramfs-tools,
    # MODULES=most) holds virtio_blk/virtio_pci/ext4 and /lib/modules holds 9p and overlay.
    mmdebstrap --quiet --variant=minbase \
        --include=systemd,systemd-sysv,udev,dbus,kmod,linux-image-amd64,initramfs-tools,python3,python3-venv,busybox-static,libseccomp2,iproute2,procps \
        --customize-hook='echo sk-vm >"$1/etc/hostname"' \
        --customize-hook='echo "/dev/vda / ext4 rw,relatime 0 1" >"$1/etc/fstab"' \
        --customize-hook="cp -r '$CACHE/wheels' \"\$1/tmp/wheels\"" \
        --customize-hook='chroot "$1" python3 -m venv /opt/sk-venv' \
        --customize-hook='chroot "$1" env -u PIP_FIND_LINKS -u PIP_CONSTRAINT /opt/sk-venv/bin/pip install --quiet --no-index --find-links /tmp/wheels -r /tmp/wheels/requirements.txt' \
        --customize-hook='rm -rf "$1/tmp/wheels"' \
        "$SUITE" "$ROOT" || die "mmdebstrap failed"

    # The image only mounts the shares; the steps live in the tree (cgroup-v2-inner.sh), so
    # changing them needs no rebuild.
    install -m 0755 /dev/stdin "$ROOT/usr/local/sbin/sk-check-inner" <<'EOF'
#!/bin/sh
mkdir -p /mnt/src /mnt/testcache /out
modprobe -a 9pnet_virtio 9p overlay
mount -t 9p -o trans=virtio,version=9p2000.L,ro src /mnt/src
mount -t 9p -o trans=virtio,version=9p2000.L,ro testcache /mnt/testcache 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,rw out /out
exec /bin/sh /mnt/src/scripts/vm/cgroup-v2-inner.sh
EOF
    cat >"$ROOT/etc/systemd/system/sk-check.service" <<'EOF'
[Unit]
Description=sandkasten cgroup v2 check (a daemon-like service in a nested cgroup)
After=local-fs.target systemd-udevd.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/sk-check-inner
Delegate=yes
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
    ln -sf /etc/systemd/system/sk-check.service \
        "$ROOT/etc/systemd/system/multi-user.target.wants/sk-check.service"
    # no login prompts on the console while the check runs
    ln -sf /dev/null "$ROOT/etc/systemd/system/serial-getty@ttyS0.service"
    ln -sf /dev/null "$ROOT/etc/systemd/system/getty@tty1.service"
    cp "$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -1)" "$CACHE/vmlinuz"
    cp "$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -1)" "$CACHE/initrd.img"
    truncate -s 6G "$IMG"
    mkfs.ext4 -q -F -L sk-root -d "$ROOT" "$IMG" || die "mkfs.ext4 -d failed"
    rm -rf "$ROOT"
    echo "$IMAGE_VERSION" >"$CACHE/.image-complete"
fi

# -- 4. boot and run -------------------------------------------------------------------------
OUT=$(mktemp -d /tmp/sk-vm-out.XXXXXX)
cleanup() { [ "${VM_KEEP_OUT:-0}" = 1 ] && log "results kept in $OUT" || rm -rf "$OUT"; }
trap cleanup EXIT
echo "${VM_DELEGATE:-yes}" >"$OUT/delegate"
if [ $# -gt 0 ]; then printf '%s\n' "$@" >"$OUT/args"; else printf '%s\n' "${DEFAULT_TESTS[@]}" >"$OUT/args"; fi
mkdir -p "$TEST_CACHE"

# KVM when it works: a nested /dev/kvm can exist and still hang or abort a guest (seen with
# IA32_ARCH_CAPABILITIES under nested virtualization), so a no-root boot that must reach its
# kernel panic within 30 s decides; otherwise TCG (slower, same kernel, same result).
ACCEL=${VM_ACCEL:-}
if [ -z "$ACCEL" ]; then
    ACCEL=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ] && timeout 30 qemu-system-x86_64 -accel kvm \
        -cpu max,-arch-capabilities -m 256 -nodefaults -display none -serial stdio -no-reboot \
        -nic none -kernel "$CACHE/vmlinuz" -append "console=ttyS0 panic=-1" 2>/dev/null \
        | grep -q "Kernel panic"; then
        ACCEL=kvm
    fi
fi
CPU=max
[ "$ACCEL" = kvm ] && CPU=max,-arch-capabilities
log "booting ($ACCEL, ${MEM} MiB, $CPUS cpus, no network)"
start=$(date +%s)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 \
    -accel "$ACCEL" -cpu "$CPU" -m "$MEM" -smp "$CPUS" \
    -nodefaults -display none -serial stdio -no-reboot -nic none \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 quiet systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all panic=-1" \
    -drive "file=$IMG,if=virtio,format=raw,snapshot=on" \
    -virtfs "local,path=$REPO,mount_tag=src,security_model=none,readonly=on" \
    -virtfs "local,path=$TEST_CACHE,mount_tag=testcache,security_model=none,readonly=on" \
    -virtfs "local,path=$OUT,mount_tag=out,security_model=none"
qrc=$?
set -e
log "VM finished after $(( $(date +%s) - start )) s (qemu status $qrc)"
if [ "$qrc" = 124 ]; then log "the VM did not finish within ${TIMEOUT} s"; exit 124; fi
[ -e "$OUT/rc" ] || { log "no result from the VM"; exit 2; }
echo "---- VM environment"
cat "$OUT/env.txt"
head -n 1 "$OUT/pytest.txt"
echo "---- pytest summary"
tail -n 1 "$OUT/pytest.txt"
exit "$(cat "$OUT/rc")"
