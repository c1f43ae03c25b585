#!/bin/sh
# Slurm task-prolog for qlam-hpc: a thin wrapper over `qlam-hpc hook slurm-task-prolog`.
# Finds the binary through QLAM_HPC_BIN, else PATH (slurmd gives hooks no search path, so a
# default one is set). Reads the site config /etc/qlam-hpc/config.toml (or
# QLAM_HPC_SITE_CONFIG). See slurm/README.md.
PATH=${PATH:-/usr/local/bin:/usr/bin:/bin}
export PATH
bin=${QLAM_HPC_BIN:-$(command -v qlam-hpc 2>/dev/null)}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "qlam-hpc slurm-task-prolog: qlam-hpc not found (set QLAM_HPC_BIN or install it on PATH)" >&2
    exit 0
fi
exec "$bin" hook slurm-task-prolog
