#!/usr/bin/env bash
# Prepares this machine for the OIDC end-to-end suites (test_oidc_provider.py,
# test_qlam_core_interop.py, test_oidc_infra.py):
#   - oidc-provider and its dependencies in tests/e2e/oidc/node_modules (npm ci, from the
#     committed package-lock.json);
#   - a Python venv at tests/.work/venv with tests/e2e/requirements.txt (QLAM Core, pytest,
#     requests); other suites may add their own packages to the same venv.
# Needs node >= 20, npm, python3 >= 3.10 and openssl; installs openssl (Debian) as root if
# it is missing. Idempotent and quiet: a step is skipped when its inputs have not changed.
# Network: the npm registry and PyPI only.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$repo/tests/.work"
venv="$work/venv"
oidc="$here/oidc"

say() { echo "setup-oidc: $*" >&2; }
die() { say "$*"; exit 1; }

sha() { sha256sum "$@" | sha256sum | cut -c1-64; }

# --- tools ---------------------------------------------------------------------------
if ! command -v openssl >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        || die "openssl is missing (the tests make a throwaway CA with it)"
    say "installing openssl (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
command -v node >/dev/null 2>&1 || die "node (>= 20) is missing"
command -v npm >/dev/null 2>&1 || die "npm is missing"
command -v python3 >/dev/null 2>&1 || die "python3 (>= 3.10) is missing"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "node $(node --version) is too old: oidc-provider 9 needs >= 20"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "python3 $(python3 --version) is too old: QLAM Core needs >= 3.10"

# --- oidc-provider -------------------------------------------------------------------
npm_stamp="$oidc/node_modules/.qlam-e2e-stamp"
npm_want="$(sha "$oidc/package-lock.json" "$oidc/package.json")-node$node_major"
if [ ! -d "$oidc/node_modules/oidc-provider" ] || [ "$(cat "$npm_stamp" 2>/dev/null)" != "$npm_want" ]; then
    (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
        || die "npm ci failed in $oidc"
    echo "$npm_want" > "$npm_stamp"
fi
node --input-type=module -e "import('$oidc/node_modules/oidc-provider/lib/index.js')" >/dev/null 2>&1 \
    || die "oidc-provider does not load under node $(node --version)"

# --- Python venv ---------------------------------------------------------------------
mkdir -p "$work"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
py_stamp="$venv/.qlam-e2e-oidc-stamp"
py_want="$(sha "$here/requirements.txt")-$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
if [ "$(cat "$py_stamp" 2>/dev/null)" != "$py_want" ] \
    || ! "$venv/bin/python" -c 'import qlam_core, pytest, requests' >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt" \
        || die "pip install -r $here/requirements.txt failed"
    echo "$py_want" > "$py_stamp"
fi
"$venv/bin/python" -c 'import qlam_core.auth.providers.oauth, pytest, requests' \
    || die "QLAM Core does not import in $venv"

say "ready (oidc-provider in $oidc/node_modules, QLAM Core in $venv)"
