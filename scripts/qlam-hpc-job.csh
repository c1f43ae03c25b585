# qlam-hpc-job.csh: source this from a tcsh/csh job script:
#
#     source /opt/qlam-hpc/share/qlam-hpc/qlam-hpc-job.csh
#
# When no token can be had (e.g. the user must log in again) it says so and ends the job
# script with status 41 (it replaces the shell, so source it from job scripts only).
# It exports QLAM_ACCESS_TOKEN and QLAM_TOKEN_EXPIRES_AT for the rest of the job and defines
# the alias `qlam_token`, which prints a valid token at any later point of a long job. A
# token staged by the site's scheduler hooks (QLAM_ACCESS_TOKEN_FILE) is used when present.

if ( $?QLAM_HPC_BIN ) then
    set _qlam_hpc_bin = "$QLAM_HPC_BIN"
else
    set _qlam_hpc_bin = qlam-hpc
endif

set _qlam_hpc_staged = 0
if ( $?QLAM_ACCESS_TOKEN_FILE ) then
    if ( -r "$QLAM_ACCESS_TOKEN_FILE" ) set _qlam_hpc_staged = 1
endif

if ( $_qlam_hpc_staged ) then
    alias qlam_token 'cat "$QLAM_ACCESS_TOKEN_FILE"'
    setenv QLAM_ACCESS_TOKEN `cat "$QLAM_ACCESS_TOKEN_FILE"`
    set _qlam_hpc_exp = "$QLAM_ACCESS_TOKEN_FILE:h/expires_at"
    if ( -r "$_qlam_hpc_exp" ) setenv QLAM_TOKEN_EXPIRES_AT `cat "$_qlam_hpc_exp"`
    unset _qlam_hpc_exp
else
    alias qlam_token "$_qlam_hpc_bin token --min-ttl 5m"
    set _qlam_hpc_env = "`$_qlam_hpc_bin env --shell csh --min-ttl job`"
    if ( $status != 0 || "$_qlam_hpc_env" == "" ) then
        echo "qlam-hpc-job.csh: no QLAM token for this job; if you must log in again, run qlam-hpc login on a login node." > /dev/stderr
        # `exit` in a sourced file leaves only that file in tcsh: replace the job's shell
        # instead, so the job ends with status 41.
        exec /bin/sh -c 'exit 41'
    endif
    eval "$_qlam_hpc_env"
    unset _qlam_hpc_env
endif
unset _qlam_hpc_staged _qlam_hpc_bin
