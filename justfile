# Developer shortcuts (just is installed into .venv by `./test.sh`: `.venv/bin/just <target>`).

# start the receiver on the embedded defaults
serve:
    ./start.sh

# everything CI runs
test *ARGS:
    ./test.sh {{ARGS}}

# only the fast tests (no Orthanc, no serve process)
unit:
    .venv/bin/pytest -q -m "not integration"

lint:
    .venv/bin/ruff check oxidicom_py tests sample_data bench
    .venv/bin/ruff format --check oxidicom_py tests sample_data bench

fmt:
    .venv/bin/ruff format oxidicom_py tests sample_data bench

# unpack the two public sample series into sample_data/downloads
samples:
    .venv/bin/python sample_data/get_samples.py

# PostgreSQL + Orthanc + oxidicom_py in containers (needs a Docker engine)
up:
    docker compose up -d --build

down:
    docker compose down
