#!/usr/bin/env bash
# Prepares this machine for tests/e2e/test_lock_fallback.py: libfuse 3 and fusermount3
# (Debian package fuse3), /dev/fuse, and mfusepy in the test venv (tests/.work/venv).
# Idempotent; installs packages only when missing (needs root for that).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/tests/.work/venv"

have_libfuse() { ldconfig -p 2>/dev/null | grep -qE 'libfuse3?\.so\.[23]'; }

if ! command -v fusermount3 >/dev/null 2>&1 || ! have_libfuse; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup-fuse: fuse3 is missing and installing it needs root" >&2
        exit 1
    fi
    echo "setup-fuse: installing fuse3 (Debian)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends fuse3 >/dev/null
fi

if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
if [ ! -c /dev/fuse ]; then
    echo "setup-fuse: /dev/fuse is missing: this machine cannot mount FUSE filesystems" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import mfusepy' >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements-fuse.txt"
fi
"$venv/bin/python" -c 'import mfusepy' 2>/dev/null || {
    echo "setup-fuse: mfusepy does not load libfuse" >&2
    exit 1
}
echo "setup-fuse: ready (libfuse, /dev/fuse, mfusepy in $venv)" >&2
