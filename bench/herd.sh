#!/usr/bin/env bash
# bench/herd.sh: N concurrent `qlam-hpc token` processes at the moment a refresh is due.
#
# Reports, per round: IdP refresh requests (goal: 1), failed processes (goal: 0),
# distinct tokens printed (goal: 1), families revoked (goal: 0), wall time.
#
#   bench/herd.sh                  # 1000 processes, 3 rounds, release build
#   N=300 ROUNDS=5 bench/herd.sh
#
# Loopback only: the IdP is the bundled qlam-test-idp on 127.0.0.1.

N="${N:-1000}"
ROUNDS="${ROUNDS:-3}"
LOGIN_TTL=8      # the token being replaced: due for refresh LOGIN_TTL/2 s after issue
REFRESH_TTL=60   # what the herd's refresh gets

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool curl curl
build_release
start_idp --access-ttl "$REFRESH_TTL" --refresh-ttl 86400 --auto-approve --device-interval 1
hpc_env "$WORK/env"
STORE="$QSH_CONFIG_DIR/credentials/cache_oauth_default_qlam_$(printf %s oauth_default_qlam | sha256sum | cut -d' ' -f1).json"

idp_admin POST /admin/config -H 'Content-Type: application/json' -d "{\"access_token_ttl\":$LOGIN_TTL}" >/dev/null
login_auto

# Seconds to wait until less than expires_in/2 is left (qlam-hpc's min_ttl cap, DESIGN §6).
due_in() {
    python3 - "$STORE" <<'EOF'
import json, sys, time
from datetime import datetime, timezone
# Precise expiry: token_data.created_at + expires_in (the top-level expires_at is QLAM
# Core's, truncated to the minute).
td = json.load(open(sys.argv[1]))["extra"]["token_data"]
created = datetime.fromisoformat(td["created_at"].replace("Z", "+00:00"))
if created.tzinfo is None:
    created = created.replace(tzinfo=timezone.utc)
exp = created.timestamp() + float(td["expires_in"])
print(max(0.0, exp - float(td["expires_in"]) / 2 - time.time() + 0.5))
EOF
}

counter() { idp_admin GET /admin/counters | python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

echo "$(machine_info)"
echo "qlam-hpc: $HPC"
echo "herd: $N concurrent '$(basename "$HPC") token --min-ttl 2m', $ROUNDS rounds"
printf '%-9s %-16s %-9s %-16s %-16s %-10s\n' round refresh_calls failures distinct_tokens families_revoked wall_s
RESULTS="$OUT/herd.tsv"
printf 'round\tn\trefresh_requests\tfailures\tdistinct_tokens\tfamilies_revoked\twall_s\n' >"$RESULTS"

# run_herd LABEL: N concurrent `token` processes, one result row.
run_herd() {
    local label="$1" d="$WORK/herd-$1" i p fail=0 t0 t1 wall distinct refresh revoked
    idp_admin POST /admin/reset-counters >/dev/null
    mkdir -p "$d"
    local pids=()
    t0=$(date +%s.%N)
    for i in $(seq 1 "$N"); do
        "$HPC" token --min-ttl 2m >"$d/$i.out" 2>"$d/$i.err" </dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do
        wait "$p" || fail=$((fail + 1))
    done
    t1=$(date +%s.%N)
    wall=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    distinct=$(cat "$d"/*.out | sort -u | wc -l)
    refresh=$(counter refresh_requests)
    revoked=$(counter families_revoked)
    printf '%-9s %-16s %-9s %-16s %-16s %-10s\n' "$label" "$refresh" "$fail" "$distinct" "$revoked" "$wall"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$N" "$refresh" "$fail" "$distinct" "$revoked" "$wall" >>"$RESULTS"
    if [ "$fail" -gt 0 ]; then
        echo "  most common stderr lines of the failures:" >&2
        grep -h . "$d"/*.err | sed 's/[A-Za-z0-9_-]\{40,\}/<redacted>/g' | sort | uniq -c | sort -rn | head -5 >&2
    fi
    rm -rf "$d"
}

for round in $(seq 1 "$ROUNDS"); do
    # Make the next refresh hand out a short token again, so the following round is due soon.
    if [ "$round" -gt 1 ]; then
        idp_admin POST /admin/config -H 'Content-Type: application/json' -d "{\"access_token_ttl\":$LOGIN_TTL}" >/dev/null
        "$HPC" refresh --force >/dev/null 2>"$WORK/refresh.err" || { cat "$WORK/refresh.err" >&2; exit 1; }
    fi
    idp_admin POST /admin/config -H 'Content-Type: application/json' -d "{\"access_token_ttl\":$REFRESH_TTL}" >/dev/null
    sleep "$(due_in)"
    run_herd "due-$round"
done
# Baseline: the same herd while the token is fresh (every process takes the no-lock path).
run_herd cached
echo "results: $RESULTS"
