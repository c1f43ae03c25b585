-- Lmod modulefile for qlam-hpc @VERSION@ (written by scripts/install.sh).
whatis("Name: qlam-hpc")
whatis("Version: @VERSION@")
whatis("Description: QLAM OAuth2 tokens for batch jobs: one login, a shared token store, single-flight refresh")
help([[
qlam-hpc @VERSION@: log in once on a login node (qlam-hpc login), then in batch scripts:
    . $QLAM_HPC_SHARE/qlam-hpc-job.sh || exit $?
See man qlam-hpc.
]])

local prefix = "@PREFIX@"
prepend_path("PATH", pathJoin(prefix, "bin"))
prepend_path("MANPATH", pathJoin(prefix, "share/man"))
setenv("QLAM_HPC_BIN", pathJoin(prefix, "bin/qlam-hpc"))
setenv("QLAM_HPC_SHARE", pathJoin(prefix, "share/qlam-hpc"))
