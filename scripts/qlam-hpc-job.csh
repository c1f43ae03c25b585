# qlam-hpc-job.csh: source this from a tcsh/csh job script:
#
#     source /opt/qlam-hpc/share/qlam-hpc/qlam-hpc-job.csh
#
# When no token can be had it says so and ends the job script with qlam-hpc's exit status
# (41 when the user must log in again). It replaces the shell to do that, so source it from
# job scripts only.
# It exports QLAM_ACCESS_TOKEN and QLAM_TOKEN_EXPIRES_AT for the rest of the job and defines
# the alias `qlam_token`, which prints a valid token at any later point of a long job. A
# token staged by the site's scheduler hooks (QLAM_ACCESS_TOKEN_FILE) is used when present.

if ( $?QLAM_HPC_BIN ) then
    set _qlam_hpc_bin = "$QLAM_HPC_BIN"
else
    set _qlam_hpc_bin = qlam-hpc
endif

# Torque cannot set a job's environment: its prologue stages at a well-known path.
if ( ! $?QLAM_ACCESS_TOKEN_FILE && $?PBS_JOBID ) then
    if ( $?QLAM_HPC_STAGE_DIR ) then
        set _qlam_hpc_torque = "$QLAM_HPC_STAGE_DIR"
    else
        set _qlam_hpc_torque = /run/qlam-hpc
    endif
    set _qlam_hpc_torque = "$_qlam_hpc_torque/`id -u`/${PBS_JOBID}-`hostname -s`"
    if ( -r "$_qlam_hpc_torque/access_token" ) then
        setenv QSH_CONFIG_DIR "$_qlam_hpc_torque"
        setenv QLAM_ACCESS_TOKEN_FILE "$_qlam_hpc_torque/access_token"
    endif
    unset _qlam_hpc_torque
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
    set _qlam_hpc_rc = $status
    if ( $_qlam_hpc_rc == 0 && "$_qlam_hpc_env" == "" ) set _qlam_hpc_rc = 99
    if ( $_qlam_hpc_rc != 0 ) then
        echo "qlam-hpc-job.csh: no QLAM token for this job (qlam-hpc exit $_qlam_hpc_rc)." >> /dev/stderr
        if ( $_qlam_hpc_rc == 41 ) echo "qlam-hpc-job.csh: log in again with qlam-hpc login on a login node, then resubmit." >> /dev/stderr
        # `exit` in a sourced file leaves only that file in tcsh: replace the job's shell
        # instead, so the job ends with qlam-hpc's status.
        exec /bin/sh -c "exit $_qlam_hpc_rc"
    endif
    unset _qlam_hpc_rc
    eval "$_qlam_hpc_env"
    unset _qlam_hpc_env
endif
unset _qlam_hpc_staged _qlam_hpc_bin
