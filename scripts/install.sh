#!/bin/sh
# Install qlam-hpc for a site or a user:
#
#   scripts/install.sh [--prefix DIR] [--bin PATH]
#
#   DIR/bin/qlam-hpc                            the binary (default: target/release/qlam-hpc,
#                                               built with `cargo build --release -p qlam-hpc`)
#   DIR/share/qlam-hpc/qlam-hpc-job.sh, .csh    job-side helpers users source in batch scripts
#   DIR/share/qlam-hpc/slurm/, pbs/             the scheduler hooks and their admin notes
#   DIR/share/man/man1/qlam-hpc.1               the man page
#   DIR/share/bash-completion/completions/qlam-hpc, zsh and fish completions
#   DIR/share/modulefiles/qlam-hpc/<version>.lua  an Lmod modulefile (QLAM_HPC_BIN, PATH, MANPATH)
#
# Default prefix: /usr/local (as root), else ~/.local. Nothing outside DIR is touched.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=""
bin="$here/target/release/qlam-hpc"
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --bin) bin=$2; shift 2 ;;
        --bin=*) bin=${1#--bin=}; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$prefix" ]; then
    if [ "$(id -u)" = 0 ]; then prefix=/usr/local; else prefix=$HOME/.local; fi
fi
if [ ! -x "$bin" ]; then
    echo "install.sh: no binary at $bin: run \`cargo build --release -p qlam-hpc\` first, or pass --bin" >&2
    exit 2
fi

version=$("$bin" --version | awk '{print $2}')
share=$prefix/share/qlam-hpc
install -d -m 0755 "$prefix/bin" "$share" "$share/slurm" "$share/pbs" "$share/pbs/torque" \
    "$prefix/share/man/man1" "$prefix/share/bash-completion/completions" \
    "$prefix/share/zsh/site-functions" "$prefix/share/fish/vendor_completions.d" \
    "$prefix/share/modulefiles/qlam-hpc"
install -m 0755 "$bin" "$prefix/bin/qlam-hpc"
install -m 0644 "$here/scripts/qlam-hpc-job.sh" "$here/scripts/qlam-hpc-job.csh" "$share/"
install -m 0755 "$here/slurm/prolog.sh" "$here/slurm/task-prolog.sh" "$here/slurm/epilog.sh" "$share/slurm/"
install -m 0644 "$here/slurm/cli_filter.lua" "$here/slurm/README.md" "$share/slurm/"
install -m 0644 "$here/pbs/qlam_hpc_hook.py" "$here/pbs/README.md" "$share/pbs/"
for f in "$here"/pbs/torque/*; do
    [ -f "$f" ] && install -m 0755 "$f" "$share/pbs/torque/"
done
"$prefix/bin/qlam-hpc" man >"$prefix/share/man/man1/qlam-hpc.1"
"$prefix/bin/qlam-hpc" completions bash >"$prefix/share/bash-completion/completions/qlam-hpc"
"$prefix/bin/qlam-hpc" completions zsh >"$prefix/share/zsh/site-functions/_qlam-hpc"
"$prefix/bin/qlam-hpc" completions fish >"$prefix/share/fish/vendor_completions.d/qlam-hpc.fish"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" "$here/scripts/qlam-hpc.modulefile.lua" \
    >"$prefix/share/modulefiles/qlam-hpc/$version.lua"
chmod 0644 "$prefix/share/man/man1/qlam-hpc.1" "$prefix/share/modulefiles/qlam-hpc/$version.lua"

echo "installed qlam-hpc $version under $prefix"
echo "  job scripts:  . $share/qlam-hpc-job.sh   (csh: source $share/qlam-hpc-job.csh)"
echo "  modulefile:   module use $prefix/share/modulefiles && module load qlam-hpc"
