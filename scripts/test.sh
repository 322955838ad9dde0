#!/usr/bin/env bash
# The test command: set up a venv, then run ruff, mypy --strict on src and
# tests, and the whole pytest suite. Exits non-zero if any of them fails.
#
# Usage: [PYTHON=python3.14] scripts/test.sh [VENV_DIR] [PYTEST_ARGS...]
#   PYTHON    interpreter to test with (default: python3)
#   VENV_DIR  venv to make or reuse (default: .venv-test in the project)
# Anything after VENV_DIR goes to pytest, e.g. `scripts/test.sh .venv-test -x`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
. scripts/_venv.sh

venv=${1:-.venv-test}
[ $# -gt 0 ] && shift
started=$SECONDS

make_venv "${PYTHON:-python3}" "$venv"
py=$venv/bin/python

say "installing leasepool[dev] (the test extra, mypy and ruff), editable"
"$py" -m pip install -q --disable-pip-version-check -e '.[dev]'
"$py" - <<'PY'
import sys
from importlib.metadata import version

names = ("anyio", "trio", "pytest", "hypothesis", "mypy", "ruff")
print("python", sys.version.split()[0] + ",", ", ".join(f"{n} {version(n)}" for n in names))
PY

# Every check runs even when an earlier one fails, so one run shows them all.
failed=()
check() {  # check LABEL COMMAND...
    local label=$1
    shift
    say "$label"
    "$@" || failed+=("$label")
}
check "ruff check" "$py" -m ruff check .
check "ruff format --check" "$py" -m ruff format --check .
check "mypy --strict src tests" "$py" -m mypy --strict src tests
check "pytest" "$py" -m pytest "$@"

if [ ${#failed[@]} -gt 0 ]; then
    printf -v list '%s, ' "${failed[@]}"
    say "FAILED after $((SECONDS - started)) s: ${list%, }"
    exit 1
fi
say "all checks passed in $((SECONDS - started)) s"
