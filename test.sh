#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian/Ubuntu machine, then run them all.
#   ./test.sh                 ruff + the whole pytest suite
#   ./test.sh -k orthanc      extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"

# Third-party peers the tests run for real: Orthanc (the PACS), DCMTK (storescu, dcmsend, echoscu),
# GDCM (gdcmscu), dicom3tools (dciodvfy), HAProxy (the load balancer in front of receivers),
# iproute2 (ip netns, tc: the simulated hosts of tests/test_scale_out.py), Redis and RabbitMQ
# (CUBE's Celery broker, either) and NATS (LONK progress) for the current-ChRIS tests, Chromium
# (the console's pages, driven by Playwright).
PACKAGES="orthanc dcmtk libgdcm-tools dicom3tools haproxy iproute2 redis-server rabbitmq-server nats-server chromium"
if ! command -v storescu >/dev/null 2>&1 || ! command -v Orthanc >/dev/null 2>&1 \
  || ! command -v gdcmscu >/dev/null 2>&1 || ! command -v dciodvfy >/dev/null 2>&1 \
  || ! command -v haproxy >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1 \
  || ! command -v redis-server >/dev/null 2>&1 || ! [ -x /usr/sbin/nats-server ] \
  || ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: $PACKAGES"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $PACKAGES >/dev/null
fi

source ./scripts/venv.sh
ensure_venv ".[test]"

echo "ruff check"
.venv/bin/ruff check oxidicom_py tests sample_data bench
exec .venv/bin/pytest "$@"
