#!/usr/bin/env bash
# A throwaway Slurm cluster on this machine for the Slurm suites: one munged on a private
# socket, one slurmctld and four slurmd (nodes n1..n4, all on localhost, distinct ports),
# everything (config, keys, state, spool, logs, pid files) under one work directory.
#
#   tests/slurm/cluster.sh start        (re)create the work directory and start the cluster;
#                                       prints `export NAME=value` lines for the client commands
#   tests/slurm/cluster.sh stop         stop what the last start started (by PID), jobs included
#   tests/slurm/cluster.sh status       sinfo, or "not running"
#   tests/slurm/cluster.sh reconfigure  rewrite Prolog/TaskProlog/Epilog from the environment
#                                       and apply them (scontrol reconfigure)
#   tests/slurm/cluster.sh env          print the export lines again
#
# Environment (read by start and reconfigure):
#   QLAM_SLURM_DIR          work directory (default <repo>/tests/.work/slurm); start wipes it
#   QLAM_TEST_PROLOG        node Prolog (root, PrologFlags=Alloc); empty: none
#   QLAM_TEST_TASK_PROLOG   TaskProlog (job user, each task); empty: none
#   QLAM_TEST_EPILOG        node Epilog (root); empty: none
#   QLAM_TEST_HOOK_ENV      file of NAME=value lines: run the three scripts through wrappers
#                           that export these first (slurmd passes the Prolog and Epilog only
#                           its own SLURM_* variables); empty: run the scripts directly
#   QLAM_SLURM_CPUS         CPUs each node claims (default 64; the real cores are shared)
#   QLAM_SLURM_USERS        test users to create (default "qlamtest qlamtest2")
#   QLAM_SLURM_START_TIMEOUT seconds to wait for all nodes to be idle (default 60)
#
# Needs root (daemons run as root, SlurmUser=root) and slurm-wlm + munge (setup-slurm.sh).
# Only loopback is used. The daemons carry QLAM_SLURM_DAEMON=<work dir> in their environment
# (step daemons, which start with an empty one, work in <work dir>/log); stop uses that and
# the pid files to end exactly this cluster's processes and what runs under them.
set -Eeuo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${QLAM_SLURM_DIR:-$repo/tests/.work/slurm}"
nodes=(n1 n2 n3 n4)
cpus="${QLAM_SLURM_CPUS:-64}"
users="${QLAM_SLURM_USERS:-qlamtest qlamtest2}"
start_timeout="${QLAM_SLURM_START_TIMEOUT:-60}"

conf="$dir/etc/slurm.conf"
sock="$dir/munge/munge.socket"
marker="$dir/.qlam-slurm-cluster"

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
# A failure once daemons may be running: returns non-zero, so that start's ERR trap stops them.
fail() { log "$*"; return 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (the daemons and the Prolog run as root)"
}

# ---------------------------------------------------------------------------------------
# Processes

# Is PID alive and one of our daemons (its environment carries our marker)?
ours() {
    local pid=$1
    [ -n "$pid" ] && [ -r "/proc/$pid/environ" ] || return 1
    grep -qzxF "QLAM_SLURM_DAEMON=$dir" "/proc/$pid/environ" 2>/dev/null
}

# PIDs of slurmctld, slurmd, slurmstepd and munged started for this work directory.
our_pids() {
    local p comm
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        read -r comm 2>/dev/null <"/proc/$p/comm" || continue
        case "$comm" in
            slurmctld|slurmd|munged) ours "$p" && echo "$p" ;;
            # slurmctld's helper starts with an empty environment: known by its parent.
            slurmscriptd) ours "$(ppid_of "$p")" && echo "$p" ;;
            # So do step daemons; they work in the directory of slurmd's log file.
            slurmstepd)
                case "$(readlink "/proc/$p/cwd" 2>/dev/null)" in
                    "$dir/log"|"$dir/log (deleted)") echo "$p" ;;
                esac ;;
        esac
    done
    return 0
}

ppid_of() {
    local stat rest
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
    rest=${stat##*) }  # the fields after "pid (comm) "
    set -- $rest
    echo "${2:-}"
}

# All descendants of the given PIDs (job processes under a step daemon left behind).
descendants() {
    local -A kids=()
    local p c parent
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        parent=$(ppid_of "$p")
        [ -n "$parent" ] && kids[$parent]+=" $p"
    done
    local queue=("$@")
    while [ ${#queue[@]} -gt 0 ]; do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        for c in ${kids[$p]:-}; do
            echo "$c"
            queue+=("$c")
        done
    done
}

# Send TERM to each PID, wait up to 10 s, then KILL what is left.
terminate() {
    local pids=("$@") p i
    [ ${#pids[@]} -gt 0 ] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for i in $(seq 100); do
        local alive=()
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        [ ${#alive[@]} -eq 0 ] && return 0
        pids=("${alive[@]}")
        sleep 0.1
    done
    log "killing (KILL) ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

client_env() {
    export SLURM_CONF="$conf"
}

running() {
    [ -f "$dir/run/slurmctld.pid" ] && ours "$(cat "$dir/run/slurmctld.pid")"
}

do_stop() {
    client_env
    if running; then
        # End the jobs first, so that no step daemon outlives its slurmd.
        squeue -h -o %A 2>/dev/null | xargs -r scancel --quiet 2>/dev/null || true
        local i
        for i in $(seq 50); do
            [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    local pids=() f p
    for f in "$dir"/run/*.pid; do
        [ -f "$f" ] || continue
        p=$(cat "$f" 2>/dev/null || true)
        ours "$p" && pids+=("$p")
    done
    # Step daemons (and leftovers whose pid files are gone), and whatever runs under them.
    while read -r p; do
        [ -n "$p" ] && pids+=("$p")
    done < <(our_pids)
    if [ ${#pids[@]} -gt 0 ]; then
        while read -r p; do
            [ -n "$p" ] && pids+=("$p")
        done < <(descendants "${pids[@]}")
        mapfile -t pids < <(printf '%s\n' "${pids[@]}" | sort -un)
        log "stopping ${#pids[@]} processes: ${pids[*]}"
        terminate "${pids[@]}"
    fi
    rm -f "$dir"/run/*.pid "$sock" "$sock.lock"
}

# ---------------------------------------------------------------------------------------
# Setup

# Five free TCP ports: slurmctld, then four consecutive ones for n1..n4.
pick_ports() {
    python3 - <<'EOF'
import random, socket
def free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
rng = random.SystemRandom()
for _ in range(500):
    base = rng.randrange(20000, 32000)
    ports = [base] + list(range(base + 10, base + 14))
    if all(free(p) for p in ports):
        print(*ports)
        break
else:
    raise SystemExit("no free ports")
EOF
}

ensure_users() {
    local u home
    mkdir -p "$dir/home"
    chmod 755 "$dir/home"
    for u in $users; do
        home="$dir/home/$u"
        if ! id -u "$u" >/dev/null 2>&1; then
            useradd --home-dir "$home" --no-create-home --shell /bin/bash --user-group "$u"
        elif [ "$(getent passwd "$u" | cut -d: -f6)" != "$home" ]; then
            usermod --home "$home" "$u"
        fi
        mkdir -p "$home"
        chown "$u:$(id -gn "$u")" "$home"
        chmod 700 "$home"
    done
}

# Print a line of slurm.conf for a script from the environment, if one is set.
script_line() {
    local key=$1 path=$2
    [ -n "$path" ] || return 0
    [ -f "$path" ] || die "$key script not found: $path"
    [ -x "$path" ] || die "$key script not executable: $path"
    case "$path" in /*) ;; *) die "$key needs an absolute path: $path" ;; esac
    # The TaskProlog runs as the job's user: every directory above it must let them in.
    if [ "$key" = TaskProlog ]; then
        local u
        for u in $users; do
            runuser -u "$u" -- test -x "$path" \
                || die "TaskProlog $path is not executable by $u (check the directories above it)"
        done
    fi
    if [ -n "${QLAM_TEST_HOOK_ENV:-}" ]; then
        path=$(write_wrapper "$key" "$path")
    fi
    printf '%s=%s\n' "$key" "$path"
}

# slurmd runs the Prolog and Epilog with an environment of its own making (slurmd's own
# environment does not reach them), so variables for the scripts under test go into a
# wrapper: one `export NAME='value'` per line of $QLAM_TEST_HOOK_ENV, then exec the script.
# Prints the wrapper's path.
write_wrapper() {
    local key=$1 target=$2 wrapper="$dir/etc/hooks/$1" line name value
    [ -f "$QLAM_TEST_HOOK_ENV" ] || die "QLAM_TEST_HOOK_ENV: no such file: $QLAM_TEST_HOOK_ENV"
    mkdir -p "$dir/etc/hooks"
    chmod 755 "$dir/etc/hooks"
    {
        echo "#!/bin/sh"
        echo "# Written by tests/slurm/cluster.sh from $QLAM_TEST_HOOK_ENV"
        while IFS= read -r line || [ -n "$line" ]; do
            case "$line" in ''|'#'*) continue ;; esac
            name=${line%%=*}
            value=${line#*=}
            [[ "$line" == *=* && "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] \
                || die "QLAM_TEST_HOOK_ENV: not NAME=value: $line"
            printf "%s='%s'\nexport %s\n" "$name" "${value//\'/\'\\\'\'}" "$name"
        done <"$QLAM_TEST_HOOK_ENV"
        printf "exec '%s' \"\$@\"\n" "${target//\'/\'\\\'\'}"
    } >"$wrapper.new"
    chmod 755 "$wrapper.new"
    mv "$wrapper.new" "$wrapper"
    echo "$wrapper"
}

write_scripts_conf() {
    {
        echo "# Prolog, TaskProlog and Epilog, from QLAM_TEST_* (cluster.sh start|reconfigure)"
        script_line Prolog "${QLAM_TEST_PROLOG:-}"
        script_line TaskProlog "${QLAM_TEST_TASK_PROLOG:-}"
        script_line Epilog "${QLAM_TEST_EPILOG:-}"
    } >"$dir/etc/scripts.conf.new"
    mv "$dir/etc/scripts.conf.new" "$dir/etc/scripts.conf"
}

write_conf() {
    local ctld_port=$1 p1=$2 p4=$3
    cat >"$conf" <<EOF
# Written by tests/slurm/cluster.sh; every path is under $dir.
ClusterName=qlamtest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$p1
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
PrologFlags=Alloc
Include $dir/etc/scripts.conf
NodeName=n[1-4] NodeHostname=localhost Port=$p1-$p4 CPUs=$cpus RealMemory=1024 State=UNKNOWN
PartitionName=all Nodes=n[1-4] Default=YES MaxTime=INFINITE State=UP
EOF
    write_scripts_conf
}

print_env() {
    printf 'export SLURM_CONF=%s\n' "$conf"
}

wait_idle() {
    local deadline=$((SECONDS + start_timeout)) states
    while :; do
        states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
        if [ "$(printf '%s\n' "$states" | grep -c ' idle$')" = "${#nodes[@]}" ]; then
            return 0
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "nodes not idle after ${start_timeout}s:"
            printf '%s\n' "$states" >&2
            tail -n 20 "$dir/log/slurmctld.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.5
    done
}

do_start() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null \
        || die "slurm-wlm and munge are not installed (run tests/slurm/setup-slurm.sh)"
    do_stop
    trap 'log "start failed; stopping what was started"; do_stop' ERR
    # Wipe only a directory this script made (or an empty one).
    if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
        [ -f "$marker" ] || die "$dir exists and was not made by cluster.sh; refusing to wipe it"
        rm -rf "$dir"
    fi
    mkdir -p "$dir"/{etc,munge,state,spool,log,run,jobs,record}
    touch "$marker"
    chmod 755 "$dir" "$dir/etc" "$dir/munge"
    chmod 700 "$dir/state"
    chmod 755 "$dir/spool"
    chmod 1777 "$dir/jobs" "$dir/record"
    for n in "${nodes[@]}"; do mkdir -p "$dir/spool/$n"; chmod 755 "$dir/spool/$n"; done
    ensure_users

    read -r ctld_port p1 _ _ p4 < <(pick_ports)
    write_conf "$ctld_port" "$p1" "$p4"
    # The test users' commands read slurm.conf and talk to munged through its socket.
    [ ${#sock} -lt 100 ] || die "munge socket path too long for a Unix socket: $sock (set QLAM_SLURM_DIR)"
    for u in $users; do
        runuser -u "$u" -- test -r "$conf" \
            || die "$u cannot read $conf: the directories above $dir must be searchable by others (or set QLAM_SLURM_DIR, e.g. /tmp/qlam-slurm)"
    done

    export QLAM_SLURM_DAEMON="$dir"
    client_env

    mungekey --create --keyfile="$dir/munge/munge.key" 2>/dev/null \
        || { dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none; }
    chmod 400 "$dir/munge/munge.key"
    munged --force --socket="$sock" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munge.seed"
    munge -n -S "$sock" | unmunge -S "$sock" >/dev/null || fail "munged does not answer on $sock"

    slurmctld -f "$conf" -i || fail "slurmctld failed to start (see $dir/log/slurmctld.log)"
    for n in "${nodes[@]}"; do
        slurmd -f "$conf" -N "$n" || fail "slurmd $n failed to start (see $dir/log/slurmd-$n.log)"
    done
    unset QLAM_SLURM_DAEMON

    wait_idle || fail "cluster did not come up"
    trap - ERR
    log "up: nodes ${nodes[*]} idle, ${cpus} CPUs each; logs in $dir/log"
    print_env
}

# How many times slurmd of node $1 has (re)read slurm.conf. Each read logs this line at info
# level, since the CPUs=$cpus nodes (one core per socket) never match the real hardware.
config_reads() {
    local count
    count=$(grep -c 'Node configuration differs from hardware' "$dir/log/slurmd-$1.log" 2>/dev/null) \
        || true
    echo "${count:-0}"
}

do_reconfigure() {
    running || die "not running"
    client_env
    local n before=() deadline=$((SECONDS + 30)) want have
    for n in "${nodes[@]}"; do before+=("$(config_reads "$n")"); done
    write_scripts_conf
    scontrol reconfigure
    # slurmctld rereads slurm.conf before answering; each slurmd does so afterwards, on its
    # own: wait for both, so that the next job runs the new scripts on every node.
    want=$(grep -v '^#' "$dir/etc/scripts.conf" | sort || true)
    while :; do
        have=$(scontrol show config \
            | awk '($1=="Prolog"||$1=="TaskProlog"||$1=="Epilog") && $3!="(null)" {print $1"="$3}' \
            | sort)
        [ "$have" = "$want" ] && break
        [ $SECONDS -lt $deadline ] || die "slurmctld did not take the new scripts"
        sleep 0.2
    done
    local i
    for i in "${!nodes[@]}"; do
        n=${nodes[$i]}
        while [ "$(config_reads "$n")" -le "${before[$i]}" ]; do
            [ $SECONDS -lt $deadline ] || die "slurmd $n did not reread slurm.conf"
            sleep 0.1
        done
    done
}

cmd="${1:-}"
case "$cmd" in
    start) need_root; do_start ;;
    stop) need_root; do_stop ;;
    reconfigure) need_root; do_reconfigure ;;
    status)
        if running; then client_env; sinfo; else echo "not running ($dir)"; exit 3; fi ;;
    env) print_env ;;
    *) echo "usage: $0 start|stop|status|reconfigure|env" >&2; exit 2 ;;
esac
