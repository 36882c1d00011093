#!/usr/bin/env bash
# Creates (or reuses) the runtime virtualenv for a requirements file, outside the repository.
# Usage: scripts/venv.sh REQUIREMENTS_FILE VENV_DIR
# The venv is rebuilt when the requirements file changes (its hash is kept in the venv).
set -euo pipefail
req=$1 venv=$2
python=${PYTHON:-python3}
want=$(cat "$req" "$(dirname "$req")"/requirements.txt | sha256sum | cut -c1-16)
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.skython-requirements" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "==> building the Python runtime in $venv (from $req)"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check --progress-bar on -r "$req"
echo "$want" > "$venv/.skython-requirements"
echo "==> runtime ready: $venv/bin/python"
