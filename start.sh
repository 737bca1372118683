#!/usr/bin/env bash
# Set up oxidicom_py in ./.venv and start the receiver.
# With no OXIDICOM_DB_CONNECTION it runs an embedded PostgreSQL (data in ./oxidicom-data/pgdata)
# and stores files under ./oxidicom-data/files; listens on port 11111 as AE title ChRIS.
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/venv.sh
ensure_venv "."
exec .venv/bin/oxidicom-py serve "$@"
