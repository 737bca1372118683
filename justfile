# Developer shortcuts (just is installed into .venv by `./test.sh`: `.venv/bin/just <target>`).

# with no recipe: the Orthanc-backed integration tests (real Orthanc, DCMTK, PostgreSQL), as oxidicom's justfile does
integration *ARGS:
    ./test.sh -m integration {{ARGS}}

# start the receiver on the embedded defaults
serve:
    ./start.sh

# everything CI runs
test *ARGS:
    ./test.sh {{ARGS}}

# only the fast tests: pure, in memory, no sockets (about 20 s)
unit:
    .venv/bin/pytest -q tests/unit

lint:
    .venv/bin/ruff check oxidicom_py tests sample_data bench
    .venv/bin/ruff format --check oxidicom_py tests sample_data bench

fmt:
    .venv/bin/ruff format oxidicom_py tests sample_data bench

# unpack the two public sample series into sample_data/downloads
samples:
    .venv/bin/python sample_data/get_samples.py

# The stack below needs a Docker engine with the compose plugin; what is where: deploy/README.md

# PostgreSQL + Orthanc + oxidicom_py + OTel Collector, Jaeger, Prometheus, Grafana in containers
stack-up:
    docker compose up -d --build
    @echo "Grafana: http://127.0.0.1:3000   Prometheus: http://127.0.0.1:9090   Jaeger: http://127.0.0.1:16686"

# stop and remove the containers (the received files stay in the `files` volume)
stack-down:
    docker compose down

# follow the stack's logs (all services, or the ones named: `just stack-logs oxidicom otel-collector`)
stack-logs *SERVICES:
    docker compose logs -f --tail=100 {{SERVICES}}

# where the provisioned dashboard is
grafana:
    @echo "http://127.0.0.1:3000/d/oxidicom (anonymous viewer; admin login: admin / \$GRAFANA_ADMIN_PASSWORD, default admin)"

# check docker-compose.yml and deploy/ without a Docker engine (Compose schema, ports, files, dashboard)
check-stack:
    .venv/bin/pytest -q tests/unit/test_compose.py

alias up := stack-up
alias down := stack-down
