#!/bin/sh
# Runs inside the cgroup v2 VM (see cgroup-v2-check.sh) as sk-check.service, with the shares
# mounted: /mnt/src (the tree, read-only), /mnt/testcache (read-only), /out (results).
set -u
{
    echo "kernel: $(uname -r)"
    echo "cmdline: $(cat /proc/cmdline)"
    echo "/sys/fs/cgroup: $(stat -fc %T /sys/fs/cgroup)"
    echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
    echo "v1 mounts: $(grep -c ' cgroup ' /proc/mounts)"
    echo "Delegate: $(cat /out/delegate)"
} >/out/env.txt
rm -rf /root/src && mkdir -p /root/src /var/cache/sandkasten-tests
tar -C /mnt/src --exclude=./.venv --exclude=./.git --exclude=__pycache__ -cf - . \
    | tar -C /root/src -xf -
# the cached Debian rootfs the runtime tests use (building it needs the network)
[ -e /mnt/testcache/debian-bookworm-python3.tar ] \
    && cp /mnt/testcache/debian-bookworm-python3.tar /var/cache/sandkasten-tests/
cd /root/src || exit 2
# the first line names the cgroup pytest starts in, as the daemon would see its own
set -- sh -c 'echo "pytest starts in cgroup: $(cat /proc/self/cgroup)"; exec "$@"' sh \
    env PYTHONPATH=/root/src PYTHONDONTWRITEBYTECODE=1 \
    SANDKASTEN_EXPECT_DELEGATE="$(cat /out/delegate)" /opt/sk-venv/bin/python -m pytest \
    -p no:cacheprovider -v
if [ "$(cat /out/delegate)" = no ]; then
    # a service that systemd has not delegated its cgroup to
    set -- systemd-run --quiet --wait --pipe --collect -p Delegate=no \
        --unit=sk-check-nodelegate.service --working-directory=/root/src "$@"
fi
# one pytest argument per line (spaces inside an argument, as in -k "a or b", are kept)
while IFS= read -r arg; do set -- "$@" "$arg"; done </out/args
"$@" >/out/pytest.txt 2>&1 </dev/null
echo $? >/out/rc
journalctl -b --no-pager -o short-monotonic -u sk-check.service -u sk-check-nodelegate.service \
    >/out/journal.txt 2>&1
cat /out/pytest.txt
sync
