#!/usr/bin/env bash
# bench/m2m-herd.sh: N concurrent array tasks that each need an M2M (client credentials)
# token, with no token cached, against qlam-test-idp (release build, loopback):
#
#   qlam-hpc         N concurrent `qlam-hpc token` (secret in a 0600 file)      goal: 1 mint
#   curl recipe      the documented "curl the token endpoint in every task":
#                    N concurrent `curl -s -d grant_type=client_credentials
#                    -d client_id=... -d @secret-form <token endpoint>`          mints: N
#   qlam-hpc cached  the same N `qlam-hpc token` again, token now cached        goal: 0 mints
#
# The recipe as documented puts `-d client_secret=...` in curl's argv, where any user on the
# node can read it (ps, /proc/PID/cmdline); here the secret comes from a 0600 file
# (`-d @file`) so that the benchmark itself does not leak it. The request is the same.
#
# Reported per row: IdP mints (client-credentials tokens issued), failed tasks, distinct
# tokens printed, wall time of the whole herd. The IdP's M2M quota is what the mints spend.
#
#   bench/m2m-herd.sh            # N=1000
#   N=300 bench/m2m-herd.sh

N="${N:-1000}"
CLIENT=m2m-bench

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool curl curl
build_release

# The M2M client's secret: random, never printed. The IdP (server side, loopback) takes its
# registration on its command line, as an IdP's admin console would hold it.
SECRET="m2m-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
start_idp --access-ttl 3600 --client "$CLIENT:$SECRET"
TOKEN_ENDPOINT="$IDP_URL/oauth/token"

umask 077
SECRET_FILE="$WORK/m2m.secret"          # for qlam-hpc (client_secret_file)
FORM_FILE="$WORK/m2m-secret.form"       # for curl: `-d @file` keeps the secret out of argv
printf '%s\n' "$SECRET" >"$SECRET_FILE"
printf 'client_secret=%s' "$SECRET" >"$FORM_FILE"
chmod 600 "$SECRET_FILE" "$FORM_FILE"
unset SECRET

hpc_env "$WORK/env"
export QLAM_GRANT_TYPE=client_credentials QLAM_CLIENT_ID="$CLIENT" QLAM_CLIENT_SECRET_FILE="$SECRET_FILE"
STORE="$QSH_CONFIG_DIR/credentials/cache_oauth_default_qlam_$(printf %s oauth_default_qlam | sha256sum | cut -d' ' -f1).json"

counter() { idp_admin GET /admin/counters | python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

echo "$(machine_info)"
echo "qlam-hpc: $HPC"
echo "herd: $N concurrent tasks, each needing an M2M token; IdP $IDP_URL (qlam-test-idp, loopback)"
RESULTS="$OUT/m2m-herd.tsv"
printf 'method\tn\tmints\tcc_requests\tfailures\tdistinct_tokens\twall_s\n' >"$RESULTS"
ROWS=()

# run_herd LABEL KIND: N concurrent tasks of KIND (hpc | curl), one result row.
run_herd() {
    local label="$1" kind="$2" d="$WORK/herd-$2-$RANDOM" i p fail=0 t0 t1 wall distinct mints reqs
    idp_admin POST /admin/reset-counters >/dev/null
    mkdir -p "$d"
    local pids=()
    t0=$(date +%s.%N)
    for i in $(seq 1 "$N"); do
        if [ "$kind" = hpc ]; then
            SLURM_JOB_ID=4242 SLURM_ARRAY_TASK_ID="$i" "$HPC" token >"$d/$i.out" 2>"$d/$i.err" </dev/null &
        else
            curl -s -o "$d/$i.json" -w '%{http_code}' --max-time 120 \
                -d grant_type=client_credentials -d "client_id=$CLIENT" -d "@$FORM_FILE" \
                "$TOKEN_ENDPOINT" >"$d/$i.status" 2>"$d/$i.err" </dev/null &
        fi
        pids+=($!)
    done
    for p in "${pids[@]}"; do
        wait "$p" || fail=$((fail + 1))
    done
    t1=$(date +%s.%N)
    wall=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    if [ "$kind" = curl ]; then
        # curl exits 0 on any HTTP status: a task failed unless it got 200 and a token.
        fail=$(python3 - "$d" "$N" <<'EOF'
import json, sys
from pathlib import Path
d, n = Path(sys.argv[1]), int(sys.argv[2])
bad = 0
for i in range(1, n + 1):
    try:
        ok = (d / f"{i}.status").read_text().strip() == "200" and \
            json.loads((d / f"{i}.json").read_text()).get("access_token")
    except (OSError, ValueError):
        ok = False
    bad += 0 if ok else 1
print(bad)
EOF
)
        distinct=$(python3 -c '
import json, sys, pathlib
toks = set()
for p in pathlib.Path(sys.argv[1]).glob("*.json"):
    try:
        toks.add(json.loads(p.read_text())["access_token"])
    except (ValueError, KeyError):
        pass
print(len(toks))' "$d")
    else
        distinct=$(cat "$d"/*.out | sort -u | grep -c . || true)
    fi
    mints=$(counter client_credentials_ok)
    reqs=$(counter client_credentials_requests)
    ROWS+=("$(printf '%-18s %6s %7s %9s %16s %8s' "$label" "$N" "$mints" "$fail" "$distinct" "$wall")")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$N" "$mints" "$reqs" "$fail" "$distinct" "$wall" >>"$RESULTS"
    if [ "$fail" -gt 0 ]; then
        echo "  $label: most common stderr lines of the failures:" >&2
        cat "$d"/*.err 2>/dev/null | sed 's/[A-Za-z0-9_-]\{32,\}/<redacted>/g' | sort | uniq -c | sort -rn | head -5 >&2
    fi
    rm -rf "$d"
}

[ ! -e "$STORE" ] || { echo "bench: a token is cached already" >&2; exit 1; }
run_herd "qlam-hpc token" hpc
LEDGER="$STORE.m2m-ledger.json"
LEDGER_COUNT=$(python3 -c 'import json,sys,datetime; print(json.load(open(sys.argv[1]))["months"].get(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m"), 0))' "$LEDGER")
run_herd "curl recipe" curl
run_herd "qlam-hpc (cached)" hpc

echo
printf '%-18s %6s %7s %9s %16s %8s\n' method tasks mints failures distinct_tokens wall_s
for row in "${ROWS[@]}"; do echo "$row"; done
echo
echo "qlam-hpc monthly ledger beside the store: $LEDGER_COUNT mint(s) this month after its herd"
echo "results: $RESULTS"
