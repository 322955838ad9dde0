#!/usr/bin/env bash
# Run the benchmarks of issue 5: bash bench/run.sh [--quick] [run.py options]
#
# Builds (once) two virtual environments under .bench-venvs/ (gitignored):
#   current/      this project, installed editable with the trio extra
#   predecessor/  leasepool==0.1.3 from PyPI and nothing else
# then runs bench/run.py with the first. Set BENCH_PYTHON to build them with
# another interpreter (default: python3.11).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venvs="$root/.bench-venvs"
python="${BENCH_PYTHON:-python3.11}"
pip_quiet=(--quiet --disable-pip-version-check)

make_venv() {
    if [[ ! -x "$1/bin/python" ]]; then
        echo "bench: creating $1" >&2
        "$python" -m venv "$1"
    fi
}

# The project side. The editable install is redone whenever pyproject.toml
# changes or leasepool stops importing.
current="$venvs/current"
make_venv "$current"
stamp="$current/.pyproject.sha256"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]] \
    || ! "$current/bin/python" -c 'import leasepool, anyio, trio' 2>/dev/null; then
    echo "bench: installing the project (editable, [trio]) into $current" >&2
    rm -f "$current"/lib/python*/site-packages/leasepool-src.pth
    if "$current/bin/pip" install "${pip_quiet[@]}" -e "$root[trio]"; then
        echo "$want" >"$stamp"
    else
        # An unbuildable project (a missing README, say) must not stop the
        # anchors from being measured: put src/ on the path instead and say so.
        echo "bench: WARNING: editable install failed; using $root/src via a .pth" >&2
        "$current/bin/pip" install "${pip_quiet[@]}" 'anyio[trio]'
        site="$("$current/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        echo "$root/src" >"$site/leasepool-src.pth"
        rm -f "$stamp"
    fi
fi

# The predecessor side: only leasepool 0.1.3 (it has no dependencies).
predecessor="$venvs/predecessor"
make_venv "$predecessor"
if [[ "$("$predecessor/bin/python" -c 'from importlib.metadata import version; print(version("leasepool"))' 2>/dev/null)" != "0.1.3" ]]; then
    echo "bench: installing leasepool==0.1.3 into $predecessor" >&2
    "$predecessor/bin/pip" install "${pip_quiet[@]}" 'leasepool==0.1.3'
fi

cd "$root"
BENCH_LAUNCHER="bash bench/run.sh" exec "$current/bin/python" "$root/bench/run.py" "$@"
