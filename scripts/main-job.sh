#!/usr/bin/env bash
# The main-job command: set up a venv, install leasepool with its trio extra,
# and run the main job (examples/main_job.py) on asyncio, then on trio.
#
# Usage: [PYTHON=python3.14] scripts/main-job.sh [VENV_DIR] [MAIN_JOB_ARGS...]
#   PYTHON    interpreter to run with (default: python3)
#   VENV_DIR  venv to make or reuse (default: .venv-main-job in the project)
# Anything after VENV_DIR goes to the job, e.g. `--log-level INFO`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
. scripts/_venv.sh

venv=${1:-.venv-main-job}
[ $# -gt 0 ] && shift

make_venv "${PYTHON:-python3}" "$venv"
py=$venv/bin/python

say "installing leasepool[trio] from this checkout"
"$py" -m pip install -q --disable-pip-version-check '.[trio]'

for runtime in asyncio trio; do
    say "main job on $runtime"
    start=${EPOCHREALTIME:-}  # bash 5+; older shells skip the timing line
    "$py" examples/main_job.py --runtime "$runtime" "$@"
    if [ -n "$start" ]; then
        awk -v a="$start" -v b="$EPOCHREALTIME" -v r="$runtime" \
            'BEGIN { printf "(%s: %.1f s, interpreter start-up included)\n", r, b - a }'
    fi
done
