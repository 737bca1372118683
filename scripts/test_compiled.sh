#!/usr/bin/env bash
# The receive path's tests against the mypyc-compiled build (setup.py): a wheel of this checkout
# installed into its own venv (.venv-compiled), the tests run from here against that install.
#   scripts/test_compiled.sh                  the default subset (unit + receive-path integration)
#   scripts/test_compiled.sh tests/unit -x    any pytest arguments instead
# Run ./test.sh first (it installs the Debian peers and creates .venv, whose Python is used).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cc >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing a C compiler (gcc) for mypyc"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gcc >/dev/null
fi
if ! .venv/bin/python -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing the Python headers (python3-dev) for mypyc"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-dev >/dev/null
fi
root=$(pwd)
fresh=0
if [ ! -x .venv-compiled/bin/python ]; then
  .venv/bin/python -m venv .venv-compiled
  fresh=1
fi
.venv-compiled/bin/python -m pip install -q --upgrade pip >/dev/null
echo "building and installing the compiled oxidicom_py into .venv-compiled (about a minute)"
.venv-compiled/bin/python -m pip install -q ".[test]"
if [ "$fresh" -eq 0 ]; then  # an existing venv: rebuild from the checkout as it is now
  .venv-compiled/bin/python -m pip install -q --force-reinstall --no-deps .
fi
# from another folder: this checkout's sources must not shadow the installed package
compiled=$(cd / && "$root/.venv-compiled/bin/python" -c 'import oxidicom_py.dicom.pdu as m; print(m.__file__)')
case "$compiled" in
  *.so) echo "compiled build in use: $compiled" ;;
  *) echo "the build did not compile (got $compiled): is a C compiler installed?" >&2; exit 1 ;;
esac
# (test_conformance_doc reads the sources with inspect: compiled modules have none)
if [ "$#" -eq 0 ]; then
  # the compiled modules are the wire and storage path: unit tests plus the integration files
  # that drive them (registry, completion and supervision run the same pure code either way)
  set -- -q -p no:cacheprovider --ignore=tests/unit/test_conformance_doc.py tests/unit tests/integration/test_upper_layer.py \
    tests/integration/test_bad_input.py tests/integration/test_odd_values.py tests/integration/test_dimse_conformance.py \
    tests/integration/test_load.py
fi
OXIDICOM_EXPECT_COMPILED=1 exec .venv-compiled/bin/pytest "$@"
