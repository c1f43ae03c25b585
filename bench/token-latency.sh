#!/usr/bin/env bash
# bench/token-latency.sh: whole-process time to get an already cached, valid access token.
#
#   qlam-hpc token      release build, token cached in the store (no network, no lock)
#   QLAM Core           python -c: build the OAuth provider from the qsh config, .token()
#   oidc-token          oidc-agent's client asking a running agent for the same IdP's token
#   /bin/true           the cost of starting any process here, for scale
#
# plus the peak RSS of `qlam-hpc token` (GNU time -v). Goals: faster than oidc-token,
# >= 250x faster than QLAM Core, <= 10 MB RSS.
#
#   bench/token-latency.sh            # RUNS=300 hyperfine runs per command
#   RUNS=1000 bench/token-latency.sh
#
# Needs: hyperfine, GNU time (installed from Debian if missing), oidc-agent-cli (optional:
# without it the oidc-token row is skipped), and QLAM Core in tests/.work/venv (or PYTHON=).

RUNS="${RUNS:-300}"
ACCESS_TTL=3600  # > 900 s: QLAM Core treats a token as expired 300 s early, per minute

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool hyperfine hyperfine
[ -x /usr/bin/time ] || need_tool /usr/bin/time time
need_tool curl curl
PYTHON="${PYTHON:-$REPO/tests/.work/venv/bin/python}"
"$PYTHON" -c 'import qlam_core' 2>/dev/null || {
    echo "bench: QLAM Core is not importable by $PYTHON (run tests/e2e/setup-oidc.sh or set PYTHON=)" >&2
    exit 1
}

build_release
start_idp --access-ttl "$ACCESS_TTL" --auto-approve --device-interval 1 \
    --client oidc-bench:oidc-bench-secret
hpc_env "$WORK/env"
# QLAM Core's device-code provider refuses to load without a tenant (Auth0 organization).
export QLAM_TENANT=bench-org
login_auto
"$HPC" token >/dev/null # warm: the token is valid and cached

# QLAM Core reads the same store through the qsh config.json that `login` wrote.
QLAM_CORE_PY="$WORK/qlam_core_token.py"
cat >"$QLAM_CORE_PY" <<'EOF'
import sys
from qlam_core.common.context import AppContext
from qlam_core.auth.registry import auth_registry

ctx = AppContext()
current = ctx.config.current_context
pc = next(p for p in current.auth_providers if p.name == "qlam")
provider = auth_registry.create_from_settings_strict(
    pc.provider, context_name=ctx.config.context_name, provider_name=pc.name, provider_config=pc)
tok = provider.token()
sys.stdout.write(tok + "\n")
EOF
cmp <("$PYTHON" "$QLAM_CORE_PY") <("$HPC" token) >/dev/null || {
    echo "bench: QLAM Core and qlam-hpc disagree on the token" >&2
    exit 1
}

# oidc-agent: a private agent (own socket and config dir) with one account for the same IdP,
# generated non-interactively with the device flow against the auto-approving IdP.
OIDC_ROW=0
if command -v oidc-agent >/dev/null && command -v oidc-gen >/dev/null && command -v oidc-token >/dev/null; then
    export OIDC_CONFIG_DIR="$WORK/oidc-config"
    mkdir -p "$OIDC_CONFIG_DIR"
    chmod 700 "$OIDC_CONFIG_DIR"
    eval "$(oidc-agent --quiet --socket-path="$WORK/oidc-XXXXXX/agent.sock")" >/dev/null
    BENCH_PIDS+=("$OIDCD_PID")
    export OIDC_ENCRYPTION_PW=bench-only-password
    if timeout 60 oidc-gen bench-qlam --issuer="$IDP_URL/" --client-id=oidc-bench \
        --client-secret=oidc-bench-secret --scope="openid offline_access" --flow=device \
        --pw-env --confirm-default --prompt=none --no-url-call >"$WORK/oidc-gen.log" 2>&1 </dev/null &&
        oidc-token bench-qlam >/dev/null 2>&1; then
        OIDC_ROW=1
    else
        echo "bench: could not configure oidc-agent; its row is skipped (log below)" >&2
        sed 's/[A-Za-z0-9_-]\{40,\}/<redacted>/g' "$WORK/oidc-gen.log" | tail -20 >&2
    fi
fi

echo "$(machine_info)"
echo "qlam-hpc: $HPC ($(stat -c %s "$HPC") bytes)"
echo "QLAM Core: $("$PYTHON" -c 'import importlib.metadata as m; print(m.version("qlam-core"))') on $("$PYTHON" -V 2>&1)"
[ "$OIDC_ROW" = 1 ] && echo "oidc-agent: $(oidc-agent --version 2>&1 | head -1)"

cmds=(-n "/bin/true (exec floor)" "/bin/true"
      -n "qlam-hpc token" "$HPC token"
      -n "QLAM Core provider.token()" "$PYTHON $QLAM_CORE_PY")
[ "$OIDC_ROW" = 1 ] && cmds+=(-n "oidc-token (oidc-agent)" "oidc-token bench-qlam")

hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$OUT/token-latency.json" \
    --export-markdown "$OUT/token-latency.md" "${cmds[@]}"

# The close race (qlam-hpc vs oidc-token) once more, interleaved, so that background load
# hits both alike.
ilv=("true=/bin/true" "qlam-hpc=$HPC token")
[ "$OIDC_ROW" = 1 ] && ilv+=("oidc-token=$(command -v oidc-token) bench-qlam")
python3 "$REPO/bench/interleave.py" "${INTERLEAVE_RUNS:-500}" "${ilv[@]}" >"$OUT/token-latency-interleaved.json"

# Peak RSS, max over 50 runs.
rss_max() {
    local max=0 kb i
    for i in $(seq 1 50); do
        kb=$(/usr/bin/time -v "$@" 2>&1 >/dev/null | sed -n 's/.*Maximum resident set size (kbytes): //p')
        [ "$kb" -gt "$max" ] && max=$kb
    done
    echo "$max"
}
RSS_HPC=$(rss_max "$HPC" token)
RSS_PY=$(rss_max "$PYTHON" "$QLAM_CORE_PY")
[ "$OIDC_ROW" = 1 ] && RSS_OIDC=$(rss_max oidc-token bench-qlam)

python3 - "$OUT/token-latency.json" "$RSS_HPC" "$RSS_PY" "${RSS_OIDC:-}" "$OUT/token-latency-interleaved.json" <<'EOF' | tee "$OUT/token-latency-summary.txt"
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
ilv = json.load(open(sys.argv[5]))
rss = {"qlam-hpc token": sys.argv[2], "QLAM Core provider.token()": sys.argv[3],
       "oidc-token (oidc-agent)": sys.argv[4] or None}
hpc = res["qlam-hpc token"]["mean"]
print()
print("| command | mean | σ | min | median | CPU user+sys | peak RSS | mean vs qlam-hpc |")
print("|---|---|---|---|---|---|---|---|")
for name, r in res.items():
    kb = rss.get(name)
    mem = f"{int(kb)/1024:.1f} MiB" if kb else "–"
    print(f"| {name} | {r['mean']*1e3:.2f} ms | {r['stddev']*1e3:.2f} ms | {r['min']*1e3:.2f} ms "
          f"| {r['median']*1e3:.2f} ms | {(r['user'] + r['system'])*1e3:.2f} ms | {mem} "
          f"| {r['mean']/hpc:.2f}× |")
print()
core = res["QLAM Core provider.token()"]["mean"]
print(f"goal >= 250x faster than QLAM Core: {core/hpc:.0f}x -> {'met' if core/hpc >= 250 else 'NOT met'}")
if "oidc-token (oidc-agent)" in res:
    o = res["oidc-token (oidc-agent)"]["mean"]
    om, hm = res["oidc-token (oidc-agent)"]["median"], res["qlam-hpc token"]["median"]
    print(f"goal faster than oidc-token: mean {o/hpc:.2f}x, median {om/hm:.2f}x -> "
          f"{'met' if hpc < o and hm < om else 'NOT met (on mean and median)'}")
print()
print(f"interleaved ({ilv['qlam-hpc']['runs']} runs each, alternating):")
print("| command | median | p10 | CPU median |")
print("|---|---|---|---|")
for name, r in ilv.items():
    print(f"| {name} | {r['median_ms']:.2f} ms | {r['p10_ms']:.2f} ms | {r['cpu_median_ms']:.2f} ms |")
if "oidc-token" in ilv:
    a, b = ilv["qlam-hpc"]["median_ms"], ilv["oidc-token"]["median_ms"]
    print(f"interleaved: qlam-hpc median {a:.2f} ms vs oidc-token {b:.2f} ms -> "
          f"{'qlam-hpc faster' if a < b else 'qlam-hpc NOT faster'} ({b/a:.2f}x)")
print()
kb = int(sys.argv[2])
print(f"goal <= 10 MB peak RSS: {kb/1024:.1f} MiB ({kb} kB) -> {'met' if kb * 1024 <= 10_000_000 else 'NOT met'}")
EOF
