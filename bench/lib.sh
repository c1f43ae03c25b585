# bench/lib.sh: shared setup for the benchmark scripts (sourced, not run).
#
# Builds the release binaries (unless QLAM_HPC_BIN / QLAM_TEST_IDP_BIN point elsewhere),
# starts qlam-test-idp on loopback, and prepares a throwaway qlam-hpc environment under
# $WORK. Everything started here is stopped by `bench_cleanup` (an EXIT trap).

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/qlam-bench.XXXXXX")"
OUT="${OUT:-$REPO/target/bench}"
mkdir -p "$OUT"
IDP_PID=""
BENCH_PIDS=()

bench_cleanup() {
    local p
    for p in "${BENCH_PIDS[@]}" $IDP_PID; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${BENCH_PIDS[@]}" $IDP_PID; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap bench_cleanup EXIT

# apt-get install PACKAGE unless COMMAND exists (root only).
need_tool() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    echo "bench: installing $pkg" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    }
}

# Release build of both binaries, unless given.
build_release() {
    if [ -z "${QLAM_HPC_BIN:-}" ] || [ -z "${QLAM_TEST_IDP_BIN:-}" ]; then
        (cd "$REPO" && cargo build --release --quiet -p qlam-hpc -p qlam-test-idp)
    fi
    HPC="${QLAM_HPC_BIN:-$REPO/target/release/qlam-hpc}"
    IDP_BIN="${QLAM_TEST_IDP_BIN:-$REPO/target/release/qlam-test-idp}"
    [ -x "$HPC" ] && [ -x "$IDP_BIN" ] || { echo "bench: binaries missing" >&2; exit 1; }
}

# start_idp ARGS...: starts qlam-test-idp on 127.0.0.1, sets IDP_URL.
start_idp() {
    "$IDP_BIN" --bind 127.0.0.1:0 "$@" >"$WORK/idp.out" 2>"$WORK/idp.err" </dev/null &
    IDP_PID=$!
    local i
    for i in $(seq 1 200); do
        IDP_URL="$(sed -n 's/^listening \(http:[^ ]*\).*/\1/p' "$WORK/idp.out" | head -1)"
        [ -n "$IDP_URL" ] && break
        kill -0 "$IDP_PID" 2>/dev/null || { cat "$WORK/idp.err" >&2; exit 1; }
        sleep 0.05
    done
    [ -n "$IDP_URL" ] || { echo "bench: IdP did not start" >&2; exit 1; }
    IDP_URL="${IDP_URL%/}"
}

idp_admin() { # idp_admin METHOD PATH [curl args...]
    local m="$1" p="$2"
    shift 2
    curl -sS --max-time 10 -X "$m" "$IDP_URL$p" "$@"
}

# hpc_env DIR: exports the isolated qlam-hpc environment of DESIGN §3 (tests use the same).
hpc_env() {
    local d="$1"
    mkdir -p "$d/home" "$d/cfg" "$d/qsh"
    unset $(env | sed -n 's/^\(\(SLURM\|PBS\|QLAM\|QSH\)_[A-Za-z0-9_]*\)=.*/\1/p') 2>/dev/null || true
    export HOME="$d/home" XDG_CONFIG_HOME="$d/cfg" QSH_CONFIG_DIR="$d/qsh"
    export QLAM_HPC_SITE_CONFIG="$d/none.toml" QLAM_AUTH_BASE_URL="$IDP_URL"
    export QLAM_CLIENT_ID=qlam-hpc-test QLAM_GRANT_TYPE=device_code
    export NO_PROXY=127.0.0.1,localhost
    unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy
}

# login_auto: device login against an --auto-approve IdP.
login_auto() {
    timeout 60 "$HPC" -o json login --device --no-qr >"$WORK/login.json" 2>"$WORK/login.err" || {
        echo "bench: login failed" >&2
        cat "$WORK/login.err" >&2
        exit 1
    }
    tail -1 "$WORK/login.json" | grep -q '"logged_in"' || { echo "bench: no logged_in event" >&2; exit 1; }
}

machine_info() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)," \
        "kernel $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}
