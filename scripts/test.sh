#!/usr/bin/env bash
# The whole test suite: installs what is missing (scripts/deps.sh), then lint, type
# checks and pytest. The tests start the services they use themselves (a docker-registry
# on 127.0.0.1, the daemon under uvicorn) and stop them afterwards. Extra arguments go to
# pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
echo "== mypy"
mypy registry imgbuilder runner sandkasten
echo "== pytest"
python -m pytest "$@"
