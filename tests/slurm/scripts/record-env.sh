#!/bin/sh
# A Prolog, TaskProlog or Epilog for the cluster tests: records what Slurm hands the script.
# The context comes from the name it is run under (record-prolog.sh, record-task-prolog.sh,
# record-epilog.sh, symlinks to this file). Files go to <work dir>/record/ (found from
# SLURM_CONF = <work dir>/etc/slurm.conf):
#   <context>.<job id>.<node>.<pid>.env   the environment exactly as exec'd (NUL-separated)
#   <context>.<job id>.<node>.<pid>.id    uid, gid, groups, working directory, arguments
#   prolog.<job id>.<node>.<pid>.job      `scontrol show job -o` (only if record/show-job exists)
# The Prolog exits 1 on a node for which record/fail-prolog.<node> exists. The TaskProlog
# prints `export FOO=bar` and `export QLAM_RECORD_TASK_PROLOG=<its .env file>` for the task.
# Slurm gives the Prolog and Epilog no PATH, so the script sets one; /proc/$$/environ still
# shows the environment as Slurm passed it.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

case "$(basename "$0")" in
    record-prolog.sh) ctx=prolog ;;
    record-task-prolog.sh) ctx=task-prolog ;;
    record-epilog.sh) ctx=epilog ;;
    *) ctx=unknown ;;
esac
conf=${SLURM_CONF:-}
work=${conf%/etc/slurm.conf}
rec="$work/record"
[ -n "$conf" ] && [ -d "$rec" ] || exit 0
base="$rec/$ctx.${SLURM_JOB_ID:-${SLURM_JOBID:-nojob}}.${SLURMD_NODENAME:-nonode}.$$"

cat "/proc/$$/environ" >"$base.env.tmp" && mv "$base.env.tmp" "$base.env"
{
    echo "uid=$(id -u)"
    echo "gid=$(id -g)"
    echo "groups=$(id -G)"
    echo "cwd=$(pwd)"
    echo "argc=$#"
    echo "argv=$*"
} >"$base.id.tmp" && mv "$base.id.tmp" "$base.id"

if [ "$ctx" = prolog ] && [ -e "$rec/show-job" ]; then
    scontrol show job -o "$SLURM_JOB_ID" >"$base.job.tmp" 2>&1
    mv "$base.job.tmp" "$base.job"
fi
if [ "$ctx" = task-prolog ]; then
    echo "export FOO=bar"
    echo "export QLAM_RECORD_TASK_PROLOG=$base.env"
fi
if [ "$ctx" = prolog ] && [ -e "$rec/fail-prolog.${SLURMD_NODENAME:-}" ]; then
    exit 1
fi
exit 0
