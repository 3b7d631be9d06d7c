#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: a figure that does not
# move with the machine's load (this VM's shared cores swing req/s and CPU per request by
# 10-30 % between runs), for comparing two builds of taskgate step by step. It counts no
# kernel time, no cache misses, no waiting: bench/compare.sh stays the measure of speed.
#
#   bash bench/instructions.sh [--requests N] [BIN...]
#     BIN: taskgate binaries to compare, side by side (default: a release build of this
#     checkout; TASKGATE_BIN works too). N requests per case (default 2000).
#
# Cases, each a fresh taskgate under callgrind in front of the same nginx upstream as
# bench/compare.sh (completed tasks of 0.9-1.4 KB, running ones of 418 B):
#   hit, as shipped    TASKGATE_LOG=info (JSON access events to a file), 200 cached ids
#   hit, logs off      TASKGATE_LOG=warn
#   pass, as shipped   running tasks (never cached: every request is an upstream call)
# The ids are fetched once first (misses), then the counters are zeroed and N requests are
# sent over 4 keep-alive connections; instructions of every taskgate thread / N is printed.
# Installs valgrind, nginx, curl, python3 from Debian when missing. About 1 min per binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

n=2000 bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --requests) n=$2; shift 2 ;;
        -*) sed -n '2,17p' "$0" >&2; exit 64 ;;
        *) bins+=("$1"); shift ;;
    esac
done
say() { echo "instructions: $*" >&2; }

missing=()
for t in valgrind nginx curl python3; do command -v "$t" >/dev/null || missing+=("$t"); done
install_missing instructions "${missing[@]}"
[ ${#bins[@]} -gt 0 ] || bins=("$(taskgate_bin)")

tmp=$(mktemp -d -p /dev/shm taskgate-instr.XXXXXX 2>/dev/null || mktemp -d /tmp/taskgate-instr.XXXXXX)
chmod 755 "$tmp"
pids=()
trap 'stop_pids; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

start_task_upstream "$tmp" 1000 >/dev/null
wait_http "http://127.0.0.1:$up_port/api/task/done-0"

# PORT PREFIX COUNT CONNS: COUNT GETs of PREFIX0..PREFIX199 in turn over CONNS keep-alive
# connections; exits 1 unless every answer is a 200.
load() {
    python3 - "$@" <<'EOF'
import http.client, sys, threading
port, prefix, count, conns = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bad = []
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(k, count, conns):
        c.request("GET", f"{prefix}{i % 200}", headers={"X-Forwarded-For": f"10.0.{i % 200}.1"})
        r = c.getresponse(); r.read()
        if r.status != 200: bad.append(r.status)
threads = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(1 if bad else 0)
EOF
}

# BIN LOG PREFIX -> instructions per request
measure() {
    local bin=$1 log=$2 prefix=$3 port adm out pid
    port=$(free_port) adm=$(free_port) out="$tmp/cg.$port"
    (cd "$tmp" && exec env -i PATH="$PATH" \
        TASKGATE_API_KEY=bench-key TASKGATE_UPSTREAM_URL="http://127.0.0.1:$up_port/api" \
        TASKGATE_LISTEN="127.0.0.1:$port" TASKGATE_ADMIN_LISTEN="127.0.0.1:$adm" \
        TASKGATE_LOG="$log" TASKGATE_RATE_LIMIT=0 TASKGATE_TRUST_FORWARDED=true \
        TASKGATE_CACHE_MAX_BYTES=1GiB \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" >"$tmp/log.$port" 2>&1) &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$adm/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    load "$port" "$prefix" 200 1      # each id once: the misses
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$port" "$prefix" "$n" 4
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    # The dump after zeroing is the file with a part number; its "summary:" is every thread.
    awk -v n="$n" '/^summary:/ {printf "%.1fk\n", $2 / n / 1000}' "$out".*
}

printf '%-44s %16s %16s %16s\n' "binary" "hit, as shipped" "hit, logs off" "pass, as shipped"
for bin in "${bins[@]}"; do
    say "$bin"
    printf '%-44s %16s %16s %16s\n' "$(basename "$bin")" \
        "$(measure "$bin" info /task/done-)" \
        "$(measure "$bin" warn /task/done-)" \
        "$(measure "$bin" info /task/run-)"
done
echo "(user-space instructions per request, callgrind; $n requests per case, 4 connections)"
