#!/usr/bin/env bash
# Prepares this machine for the Slurm suites (tests/slurm): installs the Debian packages
# slurm-wlm (slurmctld, slurmd, client commands) and munge when a command is missing.
# Idempotent and quiet; installing needs root (the suites themselves need root too).
# The distribution's units are not used: tests/slurm/cluster.sh starts private daemons.
set -euo pipefail

say() { echo "setup-slurm: $*" >&2; }

have_all() {
    local tool
    for tool in munged mungekey munge slurmctld slurmd sbatch squeue sinfo scontrol scancel srun; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || return 1
    done
}

if ! have_all; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "slurm-wlm and munge are missing and installing them needs root and apt-get"
        exit 1
    fi
    say "installing slurm-wlm and munge (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages' own services from starting where an init system
    # would otherwise try (the suites run private daemons on other ports and sockets).
    policy=/usr/sbin/policy-rc.d
    created_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=true
    fi
    status=0
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || status=$?
    $created_policy && rm -f "$policy"
    [ "$status" = 0 ] || { say "apt-get install slurm-wlm munge failed ($status)"; exit 1; }
    have_all || { say "slurm-wlm and munge installed, but some commands are still missing"; exit 1; }
fi
command -v python3 >/dev/null 2>&1 || { say "python3 is missing (cluster.sh picks free ports with it)"; exit 1; }
command -v runuser >/dev/null 2>&1 || { say "runuser (util-linux) is missing"; exit 1; }
say "ready ($(slurmd -V 2>/dev/null), $(munged --version 2>/dev/null | cut -d' ' -f1))"
