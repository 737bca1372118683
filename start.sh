#!/usr/bin/env bash
# Set up oxidicom_py in ./.venv and start the receiver, and the console beside it.
# With no OXIDICOM_DB_CONNECTION it runs an embedded PostgreSQL (data in ./oxidicom-data/pgdata)
# and stores files under ./oxidicom-data/files; listens on port 11111 as AE title ChRIS; the
# console (series board, associations, jobs, deliveries, health) on http://127.0.0.1:8090/.
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/venv.sh
ensure_venv "."
console_port="${OXIDICOM_CONSOLE_PORT:-8090}"
if [ "$console_port" != "0" ]; then
  echo "oxidicom_py console: http://${OXIDICOM_CONSOLE_ADDRESS:-127.0.0.1}:${console_port}/ (read-only unless OXIDICOM_CONSOLE_TOKEN is set)"
fi
exec .venv/bin/oxidicom-py serve "$@"
