# qlam-hpc-job.sh: source this from an sbatch or qsub script (sh, bash, zsh, ksh):
#
#     . /opt/qlam-hpc/share/qlam-hpc/qlam-hpc-job.sh || exit $?
#
# It makes sure a QLAM token valid for the rest of the job is available, exports
# QLAM_ACCESS_TOKEN and QLAM_TOKEN_EXPIRES_AT, and defines `qlam_token`, which prints a
# valid token at any later point of a long job. When the site's scheduler hooks staged a
# token for the job (QLAM_ACCESS_TOKEN_FILE), that copy is used and kept fresh by the hooks.
# If the user must log in again, it says so and returns 41.

_qlam_hpc_bin=${QLAM_HPC_BIN:-qlam-hpc}

# Torque cannot set a job's environment: its prologue stages at a well-known path.
if [ -z "${QLAM_ACCESS_TOKEN_FILE:-}" ] && [ -n "${PBS_JOBID:-}" ]; then
    _qlam_hpc_torque="${QLAM_HPC_STAGE_DIR:-/run/qlam-hpc}/$(id -u)/${PBS_JOBID}-$(hostname -s 2>/dev/null || hostname)"
    if [ -r "$_qlam_hpc_torque/access_token" ]; then
        QSH_CONFIG_DIR=$_qlam_hpc_torque
        QLAM_ACCESS_TOKEN_FILE=$_qlam_hpc_torque/access_token
        export QSH_CONFIG_DIR QLAM_ACCESS_TOKEN_FILE
    fi
    unset _qlam_hpc_torque
fi

if [ -n "${QLAM_ACCESS_TOKEN_FILE:-}" ] && [ -r "$QLAM_ACCESS_TOKEN_FILE" ]; then
    qlam_token() {
        cat "$QLAM_ACCESS_TOKEN_FILE"
    }
    QLAM_ACCESS_TOKEN=$(cat "$QLAM_ACCESS_TOKEN_FILE")
    export QLAM_ACCESS_TOKEN
    # The hooks write the staged token's expiry beside it.
    _qlam_hpc_exp="$(dirname "$QLAM_ACCESS_TOKEN_FILE")/expires_at"
    if [ -r "$_qlam_hpc_exp" ]; then
        QLAM_TOKEN_EXPIRES_AT=$(cat "$_qlam_hpc_exp")
        export QLAM_TOKEN_EXPIRES_AT
    fi
    unset _qlam_hpc_exp
else
    qlam_token() {
        "$_qlam_hpc_bin" token --min-ttl 5m
    }
    if _qlam_hpc_env=$("$_qlam_hpc_bin" env --shell sh --min-ttl job); then
        eval "$_qlam_hpc_env"
        unset _qlam_hpc_env
    else
        _qlam_hpc_rc=$?
        unset _qlam_hpc_env
        echo "qlam-hpc-job.sh: no QLAM token for this job (qlam-hpc exit $_qlam_hpc_rc)." >&2
        if [ "$_qlam_hpc_rc" -eq 41 ]; then
            echo "qlam-hpc-job.sh: log in again with \`qlam-hpc login\` on a login node, then resubmit." >&2
        fi
        return "$_qlam_hpc_rc" 2>/dev/null || exit "$_qlam_hpc_rc"
    fi
fi
