#!/usr/bin/env bash
# Installs what Sandkasten and its tests need on Debian or Ubuntu, as root, and nothing
# that is already there: apt packages, then a virtual environment in .venv with the
# project installed in editable mode. Safe to run again; quick when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  ca-certificates curl jq git
  python3 python3-venv python3-dev
  docker-registry apache2-utils      # a real OCI registry (and htpasswd) for the tests
  busybox-static mmdebstrap          # images built without Docker
  skopeo umoci                       # independent cross-checks and benchmark baselines
  bubblewrap crun                    # benchmark baselines
  libseccomp2 iproute2 util-linux zstd pigz hyperfine
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "error: missing packages (${missing[*]}); run as root: sudo $0" >&2
    exit 1
  fi
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.sandkasten-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "== installing the project into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
