# Sourced by main-job.sh and test.sh: make, or reuse, a venv that has pip.
#
# make_venv PYTHON DIR
#   Creates DIR with PYTHON unless DIR already holds a venv of that very
#   Python version with a working pip. Some Pythons (Debian's without
#   python3-venv, the private 3.14 build) lack ensurepip: the venv is then made
#   without pip and pip is installed into it from PyPI by any pip >= 22.3 that
#   is already on the machine (`python3 -m pip --python DIR/bin/python`).

say() { printf '\n==> %s\n' "$*"; }

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

make_venv() {
    local python=$1 dir=$2 want have
    command -v "$python" >/dev/null 2>&1 || [ -x "$python" ] ||
        die "no Python at '$python'; set PYTHON to a Python 3.11+ interpreter"
    want=$("$python" -c 'import sys; print(sys.version)') ||
        die "'$python' does not run"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "leasepool needs Python 3.11 or newer; '$python' is $want"
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
        have=$("$dir/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || true)
        if [ "$have" = "$want" ]; then
            say "reusing venv $dir (Python ${want%% *})"
            return 0
        fi
        say "venv $dir has Python ${have%% *}, not ${want%% *}: making it again"
    fi
    rm -rf "$dir"
    say "making venv $dir with $python (Python ${want%% *})"
    if ! "$python" -m venv "$dir" >/dev/null 2>&1; then
        rm -rf "$dir"
        "$python" -m venv --without-pip "$dir" || die "cannot make a venv in $dir"
        local outer
        for outer in python3 python; do
            if "$outer" -m pip --python "$dir/bin/python" install -q pip \
                >/dev/null 2>&1; then
                break
            fi
        done
        "$dir/bin/python" -m pip --version >/dev/null 2>&1 ||
            die "$python has no ensurepip and no outer pip >= 22.3 could install pip into $dir"
    fi
}
