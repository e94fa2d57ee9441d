#!/usr/bin/env bash
# The Python clients the integration tests drive (an independent WebSocket implementation):
# a venv in target/py-venv with `websockets` and `h2` (HTTP/2, RFC 8441) from PyPI. Idempotent;
# prints the interpreter path.
# Needs: python3 with the venv module (Debian: apt-get install python3-venv).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/target/py-venv
if ! "$venv/bin/python" -c 'import websockets, h2' 2>/dev/null; then
  python3 -m venv "$venv" >&2 || { echo "setup-python.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'websockets==13.1' 'h2==4.1.0' >&2
fi
echo "$venv/bin/python"
