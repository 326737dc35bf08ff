# Shared by scripts/serve, scripts/test and the benchmarks: a local venv, refreshed when
# pyproject.toml changes. Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

pick_python() {
    for candidate in python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "deepmemory-service needs Python 3.11 or newer" >&2
    exit 1
}

# ensure_venv EXTRAS: installs the package (editable) with EXTRAS ("" or "test" or "test,minilm")
# Two commands started together on a fresh checkout (`local_llm prepare &` and `scripts/test`)
# once both ran `python -m venv` into one directory: a venv without pip, stamped as installed.
# So callers take turns under a lock, and only a finished install is stamped.
ensure_venv() {
    local extras="$1"
    mkdir -p "$VENV"
    (
        flock 9
        _install_venv "$extras"
    ) 9>"$ROOT/.venv.lock"
}

_install_venv() {
    local extras="$1"
    local stamp="$VENV/.installed"
    local want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) [$extras]"
    if [ ! -x "$PY" ] || ! "$PY" -m pip --version >/dev/null 2>&1; then
        rm -f "$stamp"
        "$(pick_python)" -m venv --clear "$VENV" || return 1
    fi
    # an install with more extras serves a command that needs fewer
    local have=""
    [ -f "$stamp" ] && have="$(cat "$stamp")"
    if [ "$have" != "$want" ] && { [ -n "$extras" ] || [ "${have%% *}" != "${want%% *}" ]; }; then
        echo "Installing deepmemory-service${extras:+[$extras]} into $VENV ..." >&2
        rm -f "$stamp"
        "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip || return 1
        local spec="$ROOT"
        [ -n "$extras" ] && spec="$ROOT[$extras]"
        "$PY" -m pip install --quiet --disable-pip-version-check -e "$spec" || return 1
        echo "$want" > "$stamp"
    fi
}

# Debian's Chromium for the browser tests; never a browser downloaded by a test tool.
ensure_chromium() {
    if [ -x /usr/bin/chromium ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Debian's chromium for the browser tests ..." >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq chromium >/dev/null
    else
        echo "warning: /usr/bin/chromium is missing and cannot be installed here" >&2
        return 1
    fi
}

# use_checkout_instance: the instance scripts/serve runs: data under the checkout's var/
# (the package's default in a checkout; DEEPMEMORY_DATA_DIR may say otherwise) and a stable
# key for login tokens kept there, which every command reads, so printed links and minted
# tokens survive restarts
use_checkout_instance() {
    local dir="${DEEPMEMORY_DATA_DIR:-$ROOT/var}"
    if [ -z "${DEEPMEMORY_SECRET_KEY:-}" ] && [ ! -f "$dir/secret_key" ]; then
        mkdir -p "$dir"
        (umask 077 && "$PY" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$dir/secret_key")
    fi
}

# use_test_temproot: pytest's numbered temp dirs in a root of this checkout's own: sessions of
# other checkouts on the same machine then never clean up or reuse this one's, where its
# embedded PostgreSQL lives (a neighbour's session starting in the shared
# /tmp/pytest-of-$USER took it down mid-run: 220 errors; 0 with a root of its own)
use_test_temproot() {
    PYTEST_DEBUG_TEMPROOT="${PYTEST_DEBUG_TEMPROOT:-${TMPDIR:-/tmp}/deepmemory-tests-$(echo "$ROOT" | sha256sum | cut -c1-12)}"
    export PYTEST_DEBUG_TEMPROOT
    mkdir -p "$PYTEST_DEBUG_TEMPROOT"
}
