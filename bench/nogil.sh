#!/usr/bin/env bash
# `make nogil`: free-threaded CPython 3.13 (--disable-gil) beside the normal build, opt-in, not in CI.
#
#   1. fetch Debian trixie's python3.13 source package through a private apt configuration
#      (its own sources, lists and cache under $CACHE/nogil-apt; the system's apt is never touched)
#   2. build it with --disable-gil into $CACHE/python3.13t (skipped once $CACHE/python3.13t/.built exists;
#      14-17 min on two shared cores)
#   3. a venv $CACHE/nogil-venv, then each dependency with --only-binary=:all: one at a time, so a
#      missing cp313t wheel is recorded with pip's own error (in $CACHE/nogil-venv/deps.txt) instead of
#      pip compiling it from source or the whole install failing
#   4. the runtime's unit tests on it (the project on PYTHONPATH), then bench/nogil.py on both builds
#
# bench/nogil.sh [all|build|venv|test|bench]: all (what `make nogil` runs) is every step in turn;
# build is steps 1-2, venv step 3, test the unit tests (extra pytest arguments may follow), and
# bench the benchmark (extra bench/nogil.py arguments may follow).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$(realpath -m "${NOGIL_CACHE:-$ROOT/.cache}")"
PREFIX="$CACHE/python3.13t"
VENV="$CACHE/nogil-venv"
SRC="$CACHE/nogil-src"
APTDIR="$CACHE/nogil-apt"
NORMAL_PY="${NORMAL_PY:-$ROOT/.venv/bin/python}"
JOBS="${NOGIL_JOBS:-2}"

log() { printf '[nogil %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

fetch_source() {
    if compgen -G "$SRC/python3.13_*.orig.tar.*" >/dev/null; then
        return
    fi
    log "fetching python3.13 source (trixie) through a private apt configuration"
    mkdir -p "$APTDIR"/{lists/partial,archives/partial,etc/sources.list.d,etc/preferences.d} "$SRC"
    cat >"$APTDIR/etc/sources.list" <<'EOF'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
EOF
    # Every path apt would read or write points into $APTDIR; the system's state stays as it was.
    cat >"$APTDIR/apt.conf" <<EOF
Dir::Etc::SourceList "$APTDIR/etc/sources.list";
Dir::Etc::SourceParts "$APTDIR/etc/sources.list.d";
Dir::Etc::Preferences "$APTDIR/etc/preferences";
Dir::Etc::PreferencesParts "$APTDIR/etc/preferences.d";
Dir::State "$APTDIR";
Dir::State::Lists "$APTDIR/lists";
Dir::State::status "/dev/null";
Dir::Cache "$APTDIR";
Dir::Cache::Archives "$APTDIR/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "root";
EOF
    export APT_CONFIG="$APTDIR/apt.conf"
    apt-get -q update
    (cd "$SRC" && apt-get -q source --download-only -t trixie python3.13)
    unset APT_CONFIG
}

build() {
    if [[ -f "$PREFIX/.built" ]]; then
        log "already built: $PREFIX ($("$PREFIX/bin/python3.13t" -VV | head -1))"
        return
    fi
    fetch_source
    local tarball tree
    tarball="$(compgen -G "$SRC/python3.13_*.orig.tar.*" | head -1)"
    rm -rf "$SRC/build" && mkdir -p "$SRC/build"
    tar -xf "$tarball" -C "$SRC/build"
    tree="$(find "$SRC/build" -mindepth 1 -maxdepth 1 -type d | head -1)"
    log "configure --disable-gil --prefix=$PREFIX ($tree)"
    (cd "$tree" && ./configure -q --disable-gil --prefix="$PREFIX" >"$SRC/configure.log" 2>&1)
    log "make -j$JOBS (12-14 min on two cores; log in $SRC/make.log)"
    (cd "$tree" && nice make -j"$JOBS" >"$SRC/make.log" 2>&1)
    log "make install"
    (cd "$tree" && make install >"$SRC/install.log" 2>&1)
    "$PREFIX/bin/python3.13t" -c 'import sys; assert not sys._is_gil_enabled(), "GIL is on"'
    touch "$PREFIX/.built"
    rm -rf "$SRC/build"
    log "built: $("$PREFIX/bin/python3.13t" -VV | head -1)"
}

# Each of the project's dependencies (pyproject.toml) and the test runner's, one `pip install
# --only-binary=:all:` each, so one without a cp313t wheel is recorded with pip's own error
# instead of being compiled from source (a plain install builds the newest numpy from its sdist)
# or failing the whole install. pip's resolver then settles on the newest release that has a
# wheel: numpy 2.4.x, pydantic 2.12.x with pydantic-core 2.41.x.
project_deps() {
    "$1" - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
dev = [d for d in project["optional-dependencies"]["dev"] if d.startswith("pytest")]
print("\n".join(project["dependencies"] + dev))
PY
}

venv() {
    local py="$VENV/bin/python" report="$VENV/deps.txt" dep out
    if [[ ! -x "$py" ]]; then
        log "venv $VENV"
        "$PREFIX/bin/python3.13t" -m venv "$VENV"
        "$py" -m pip install -q --upgrade pip
    fi
    if [[ -f "$VENV/.installed" && "$VENV/.installed" -nt "$ROOT/pyproject.toml" \
        && "$VENV/.installed" -nt "$0" ]]; then
        log "venv up to date: $VENV (rm $VENV/.installed to try every dependency again)"
        cat "$report"
        return
    fi
    : >"$report"
    # A source-built aiokafka from an earlier pass would answer "already satisfied" below.
    "$py" -m pip uninstall -q -y aiokafka >/dev/null 2>&1 || true
    while read -r dep; do
        # torch's wheel pulls some 3 GB of CUDA wheels, and nothing run here imports it: only
        # ask pip whether it would install (NOGIL_TORCH=1 installs it).
        local dry=()
        [[ "$dep" == torch* && "${NOGIL_TORCH:-0}" != 1 ]] && dry=(--dry-run --no-deps)
        if out="$("$py" -m pip install -q --only-binary=:all: "${dry[@]}" "$dep" 2>&1)"; then
            printf 'ok\t%s%s\n' "$dep" "${dry:+ (a wheel exists; not installed, dry run)}" \
                >>"$report"
        else
            local why
            # A ResolutionImpossible lists every version tried: keep pip's verdict and name the
            # packages beneath that have no wheel for 3.13t at all (bench/nogil.py --why-not).
            why="$(grep -E '^ERROR' <<<"$out" | sed -E 's/Cannot install .* because/Cannot install any version, because/' | tr '\n' ' ')"
            if grep -q ResolutionImpossible <<<"$out"; then
                why+="-- no cp313t wheel in any version for: $("$py" "$ROOT/bench/nogil.py" --why-not "$dep")"
            fi
            printf 'FAIL\t%s\t%s\n' "$dep" "$why" >>"$report"
        fi
    done < <(project_deps "$py")
    # aiokafka has no cp313t wheel, and the runtime imports it at module level (ingest.runtime ->
    # ingest.dlq -> ingest.producer, ingest.reader), so without it no runtime test even imports.
    # Its sdist builds here (Cython); the tests run it with AIOKAFKA_NO_EXTENSIONS=1, its pure-
    # Python record code, as its compiled modules would turn the GIL back on at import.
    if ! "$py" -c 'import aiokafka' 2>/dev/null; then
        if out="$("$py" -m pip install -q --no-binary=aiokafka "aiokafka>=0.12,<0.15" 2>&1)"; then
            printf 'ok\t%s\n' "aiokafka>=0.12,<0.15 (built from its sdist, not a wheel)" >>"$report"
        else
            printf 'FAIL\t%s\t%s\n' "aiokafka from its sdist" "$(grep -E '^ERROR' <<<"$out" | tr '\n' ' ')" \
                >>"$report"
        fi
    fi
    # The project itself goes on PYTHONPATH rather than being installed: an editable install
    # would rewrite the egg-info that the normal venv's editable install also reads.
    "$py" -m pip list --format=freeze >"$VENV/freeze.txt"
    touch "$VENV/.installed"
    log "dependencies (ok / FAIL and pip's error), also in $report:"
    cat "$report"
    "$py" -c 'import sys; print("GIL enabled:", sys._is_gil_enabled())'
}

# The consumer runtime on the in-memory transport, the codec, the events, and this benchmark's
# own test. Two things need saying:
# - PYTHON_GIL=0: the runtime imports SQLAlchemy's asyncio layer, which loads greenlet, and
#   greenlet 3.2.2 (its last release with a cp313t wheel) does not declare itself free-threading
#   safe, so importing it turns the GIL back on, and pytest's warnings-as-errors fails the
#   run. The tests run single-threaded on the event loop; test_nogil_bench checks in a fresh
#   interpreter that the decode stage alone keeps the GIL off without the override.
# - tests/unit/test_runtime_holds.py is left out: it imports uvloop at the top, and uvloop has
#   no cp313t wheel. Deselected (NOGIL_DESELECT), each for a dependency without a cp313t wheel:
#   the runtime cases on a SQLite database ("sqlite"): the db fixture's migrations import every
#   model package's tables, and models.upsell imports langchain_core; and test_events'
#   api_bodies cases, which build the app, and pizzashop.app.shop imports confluent_kafka.
#   AIOKAFKA_NO_EXTENSIONS: see venv().
NOGIL_TESTS=(
    tests/unit/test_runtime.py
    tests/unit/test_runtime_fencing.py
    tests/unit/test_events.py
    tests/unit/test_registry_codec.py
    tests/unit/test_nogil_bench.py
)
NOGIL_DESELECT="${NOGIL_DESELECT-not sqlite and not api_bodies_with_unknown_fields}"

unit_tests() {
    log "runtime unit tests on the free-threaded build"
    (cd "$ROOT" && PYTHONPATH="$ROOT" AIOKAFKA_NO_EXTENSIONS=1 PYTHON_GIL=0 "$VENV/bin/python" \
        -m pytest -q -p no:cacheprovider "${NOGIL_TESTS[@]}" -k "$NOGIL_DESELECT" "$@")
}

case "${1:-all}" in
build) build ;;
venv) venv ;;
test) unit_tests "${@:2}" ;;
bench) "$NORMAL_PY" "$ROOT/bench/nogil.py" --nogil-python "$VENV/bin/python" "${@:2}" ;;
all)
    build
    venv
    tests_rc=0
    unit_tests || tests_rc=$?
    "$NORMAL_PY" "$ROOT/bench/nogil.py" --nogil-python "$VENV/bin/python" "${@:2}"
    # The figures are still worth having when a test failed, but the run says it failed.
    [[ $tests_rc == 0 ]] || { log "unit tests FAILED on the free-threaded build"; exit "$tests_rc"; }
    ;;
*) echo "usage: $0 [build|venv|test|bench|all]" >&2; exit 2 ;;
esac
