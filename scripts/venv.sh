# Sourced by start.sh and test.sh: create ./.venv with Python >= 3.11 and install the project.
ensure_venv() {
  local spec="$1" py=""
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      py="$candidate"; break
    fi
  done
  if [ -z "$py" ]; then
    echo "oxidicom_py needs Python >= 3.11 (with venv); none found on PATH" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($py --version)"
    "$py" -m venv .venv
  fi
  # the install is editable: only a change of the declared dependencies needs pip again
  local stamp=".venv/.oxidicom-installed-${spec//[^A-Za-z0-9]/_}" want
  want=$(cat pyproject.toml setup.py 2>/dev/null | "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/oxidicom-py ]; then
    return 0
  fi
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  echo "installing oxidicom_py ($spec) into .venv"
  .venv/bin/python -m pip install -q -e "$spec"
  echo "$want" > "$stamp"
}
