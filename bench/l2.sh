#!/usr/bin/env bash
# Redis second level: what it costs on the hit path and what it saves on a replica's miss.
# Starts a real redis-server (persistence off), a simulated Studio API that answers every id
# with a completed task after --latency-ms (a Studio round trip), and three taskgates:
# A and B sharing that Redis, C without Redis. Measures
#   1. the hit path (warm memory) with wrk, C (no Redis) vs A (Redis): should not differ;
#   2. a memory miss served from Redis: N ids filled through A, then each asked once of B
#      (memory cold, Redis warm): latency, and zero API calls for B;
#   3. a true miss (the API round trip), through B (Redis asked first, misses) and C.
# Loopback only; stops by itself (about 1 min).
#   bash bench/l2.sh [--latency-ms 50] [--ids 1000] [--misses 100] [--duration 10]
#                    [--connections 32] [--threads 1] [--rounds 2] [--keep]
# Needs python3 (3.11), curl, wrk, redis-server + redis-cli (Debian: apt-get install -y wrk
# redis-server). TASKGATE_BIN skips the cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/lib.sh

latency_ms=50 ids=1000 misses=100 duration=10 connections=32 threads=1 rounds=2 keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --latency-ms) latency_ms="$2"; shift 2 ;;
        --ids) ids="$2"; shift 2 ;;
        --misses) misses="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        *) sed -n '2,15p' "$0" >&2; exit 64 ;;
    esac
done
for t in redis-server redis-cli wrk curl python3; do
    command -v "$t" >/dev/null || { echo "l2: $t is missing (Debian: apt-get install -y wrk redis-server)" >&2; exit 69; }
done


bin=$(taskgate_bin)

tmp=$(mktemp -d /tmp/taskgate-l2.XXXXXX)
pids=()
cleanup() {
    stop_pids
    [ "$keep" = 1 ] && echo "l2: files kept in $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rows=$tmp/rows.jsonl; : >"$rows"

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$tmp" --logfile "$tmp/redis.log" --daemonize no & pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" ping >/dev/null

up_port=$(free_port)
python3 bench/quota/upstream.py --port "$up_port" --mode completed \
    --latency "$(python3 -c "print($latency_ms / 1000)")" & pids+=($!)
wait_http "http://127.0.0.1:$up_port/ctl/stats"

declare -A pub adm
start_taskgate() {  # name extra-env...
    local name=$1; shift
    pub[$name]=$(free_port); adm[$name]=$(free_port)
    (cd "$tmp" && exec env -i PATH="$PATH" \
        TASKGATE_API_KEY=l2-key TASKGATE_UPSTREAM_URL="http://127.0.0.1:$up_port/api" \
        TASKGATE_LISTEN="127.0.0.1:${pub[$name]}" TASKGATE_ADMIN_LISTEN="127.0.0.1:${adm[$name]}" \
        TASKGATE_RATE_LIMIT=0 TASKGATE_MISS_RATE=0 TASKGATE_LOG=warn "$@" "$bin") >"$tmp/$name.log" 2>&1 & pids+=($!)
    wait_ready "${adm[$name]}" "$tmp/$name.log" || exit 1
}
start_taskgate A TASKGATE_REDIS_URL="redis://127.0.0.1:$redis_port/0"
start_taskgate B TASKGATE_REDIS_URL="redis://127.0.0.1:$redis_port/0"
start_taskgate C

up_calls() { curl -s "http://127.0.0.1:$up_port/ctl/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])'; }
l2_counts() {  # replica -> "op/outcome=n ..." from its metrics
    curl -s "http://127.0.0.1:${adm[$1]}/metrics" |
        sed -n 's/^taskgate_l2_requests_total{op="\([a-z]*\)",outcome="\([a-z]*\)"} \(.*\)$/\1\/\2=\3/p' | tr '\n' ' '
}
# name path load before-calls before-l2 after-l2 json-of-measurement
add_row() {
    python3 - "$@" >>"$rows" <<'PY'
import json, sys
name, path, load, calls, l2a, l2b, out = sys.argv[1:]
o = json.loads(out)
def parse(s):
    d = {}
    for kv in s.split():
        k, v = kv.split("=")
        d[k] = float(v)
    return d
a, b = parse(l2a), parse(l2b)
delta = {k: int(b[k] - a.get(k, 0)) for k in b if b[k] - a.get(k, 0) > 0}
notes = []
if "x_cache" in o:
    notes.append("x-cache " + ", ".join(f"{k} {v}" for k, v in sorted(o["x_cache"].items())))
notes.append("Redis ops: " + (", ".join(f"{k} {v}" for k, v in sorted(delta.items())) or "none"))
if o.get("errors"):
    notes.append(f"{o['errors']} errors: {o.get('error_samples')}")
print(json.dumps({"name": name, "path": path, "load": load, "rps": o.get("rps"),
                  "p50_ms": o["p50_ms"], "p99_ms": o["p99_ms"], "upstream_calls": int(calls),
                  "notes": "; ".join(notes)}))
PY
}

load_row() {  # name path replica prefix n concurrency
    local before l2a out
    before=$(up_calls); l2a=$(l2_counts "$3")
    out=$(python3 bench/l2/load.py "http://127.0.0.1:${pub[$3]}" "$4" "$5" "$6")
    add_row "$1" "$2" "$5 ids once each, $6 at a time" "$(( $(up_calls) - before ))" "$l2a" "$(l2_counts "$3")" "$out"
}

cat >"$tmp/hot.lua" <<'EOF'
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", "/task/hot-" .. (n % 100))
end
EOF
wrk_row() {  # name path replica
    local before l2a
    before=$(up_calls); l2a=$(l2_counts "$3")
    wrk -t"$threads" -c"$connections" -d"${duration}s" --latency -s "$tmp/hot.lua" \
        "http://127.0.0.1:${pub[$3]}" >"$tmp/wrk.out"
    local out
    out=$(python3 bench/l2/wrk_summary.py "$tmp/wrk.out")
    add_row "$1" "$2" "wrk -t$threads -c$connections ${duration}s, 100 ids" "$(( $(up_calls) - before ))" "$l2a" "$(l2_counts "$3")" "$out"
}

start=$(date +%s)
echo "l2: API latency ${latency_ms} ms; Redis on :$redis_port; A, B with Redis, C without" >&2

# 1. Hit path: warm the same 100 ids in A and C (and Redis, through A), then wrk, alternating.
python3 bench/l2/load.py "http://127.0.0.1:${pub[A]}" hot- 100 8 >/dev/null
python3 bench/l2/load.py "http://127.0.0.1:${pub[C]}" hot- 100 8 >/dev/null
for r in $(seq "$rounds"); do
    echo "l2: hit path, round $r ..." >&2
    wrk_row "1. memory hit, round $r" "C: no Redis" C
    wrk_row "1. memory hit, round $r" "A: Redis configured" A
done

# 2. Fill N ids through A (true misses; each answer is also written to Redis beside the reply).
echo "l2: filling $ids ids through A ..." >&2
load_row "3. true miss (fill)" "A: Redis miss, then API" A l2- "$ids" 32
want=$(( ids + 100 ))
for _ in $(seq 100); do
    [ "$(redis-cli -p "$redis_port" dbsize)" -ge "$want" ] && break
    sleep 0.1
done
echo "l2: Redis holds $(redis-cli -p "$redis_port" dbsize) keys (want $want)" >&2
echo "l2: each id once through B ..." >&2
load_row "2. memory miss, Redis hit" "B: memory cold, Redis warm" B l2- "$ids" 1
load_row "   then memory hit" "B: same ids again" B l2- "$ids" 1

# 3. True misses: new ids, through B (Redis asked first) and C (no Redis).
echo "l2: $misses true misses through B and C ..." >&2
load_row "3. true miss" "B: Redis miss, then API" B m- "$misses" 1
load_row "3. true miss" "C: no Redis, API" C n- "$misses" 1

python3 bench/l2/report.py "$rows"
echo "l2: done in $(( $(date +%s) - start )) s"
