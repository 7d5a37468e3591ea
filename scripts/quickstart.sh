#!/usr/bin/env bash
# The main job on a fresh Debian or Ubuntu machine, as root: install what is missing,
# write a config (sandkasten init), prepare the default image without Docker (pulled when a
# registry is reachable, else built from Debian packages), start the daemon in the
# background, and run the seed guide's flow with curl. The daemon keeps running afterwards.
#
# Environment: SANDKASTEN_CONFIG (default ./sandkasten.yaml here, where `sandkasten` looks).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
  echo "error: Sandkasten needs root for namespaces, mounts and cgroups: sudo $0" >&2
  exit 1
fi

step() { printf '\n== %s\n' "$*"; }

step "installing what is missing (scripts/deps.sh)"
./scripts/deps.sh
export PATH="$PWD/.venv/bin:$PATH"
for cmd in sandkasten imgbuilder sandkasten-wsl; do
  link=/usr/local/bin/$cmd
  if [[ -L $link && ! -e $link ]]; then
    rm -f "$link"  # dangling: left by a checkout that is gone
  fi
  if [[ ! -e $link && ! -L $link ]]; then
    ln -s "$PWD/.venv/bin/$cmd" "$link"
    echo "linked $link -> $PWD/.venv/bin/$cmd"
  elif [[ $(readlink -f "$link") != "$(readlink -f ".venv/bin/$cmd")" ]]; then
    echo "note: $link is another $cmd (left alone); this one is $PWD/.venv/bin/$cmd"
  fi
done

CONFIG=${SANDKASTEN_CONFIG:-$PWD/sandkasten.yaml}
step "sandkasten init --config $CONFIG"
sandkasten init --config "$CONFIG"

read_key() {
  python3 - "$CONFIG" "$1" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or {}
print(cfg.get(sys.argv[2]) or {"listen": "127.0.0.1:8080"}.get(sys.argv[2], ""))
EOF
}
API_KEY=$(read_key api_key)
LISTEN=$(read_key listen)
PORT=${LISTEN##*:}
BASE="http://127.0.0.1:$PORT"

step "starting the daemon (sandkasten daemon -d --config $CONFIG)"
if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then
  echo "a daemon already answers on $BASE"
else
  sandkasten daemon -d --config "$CONFIG"
  for _ in $(seq 1 60); do
    curl -fsS "$BASE/healthz" >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
echo "GET /healthz -> $(curl -fsS "$BASE/healthz")"

AUTH="Authorization: Bearer $API_KEY"
step "creating a session (POST /v1/sessions {\"image\":\"python\"})"
CREATED=$(curl -sS -X POST "$BASE/v1/sessions" -H "$AUTH" \
  -H "Content-Type: application/json" -d '{"image":"python"}')
echo "$CREATED" | jq .
SESSION=$(echo "$CREATED" | jq -r '.id // empty')
if [[ -z $SESSION ]]; then
  echo "error: the session was not created (see the answer above; sandkasten doctor helps)" >&2
  exit 1
fi
cleanup() { curl -sS -X DELETE "$BASE/v1/sessions/$SESSION" -H "$AUTH" >/dev/null || true; }
trap cleanup EXIT

step "running Python in it"
curl -sS -X POST "$BASE/v1/sessions/$SESSION/exec" -H "$AUTH" \
  -H "Content-Type: application/json" -d '{"cmd":"python3 -c \"print(2 + 2)\""}' | jq .

step "writing /workspace/hello.py, reading it back, running it"
curl -sS -X POST "$BASE/v1/sessions/$SESSION/fs/write" -H "$AUTH" \
  -H "Content-Type: application/json" \
  -d '{"path":"/workspace/hello.py","text":"print(\"Hello from file!\")"}' | jq -c .
echo "read back: $(curl -sS "$BASE/v1/sessions/$SESSION/fs/read?path=/workspace/hello.py" \
  -H "$AUTH" | jq -r .content_base64 | base64 -d)"
curl -sS -X POST "$BASE/v1/sessions/$SESSION/exec" -H "$AUTH" \
  -H "Content-Type: application/json" -d '{"cmd":"python3 /workspace/hello.py"}' | jq .

step "destroying the session"
trap - EXIT
curl -sS -X DELETE "$BASE/v1/sessions/$SESSION" -H "$AUTH" | jq -c .

cat <<EOF

Sandkasten works. The daemon keeps running in the background:
  API:     $BASE/v1  (api_key in $CONFIG)
  logs:    sudo sandkasten logs --config $CONFIG
  stop:    sudo sandkasten stop --config $CONFIG
Next: the SDK (docs/sdk.md), the API (docs/api.md), checks (sandkasten doctor).
EOF
