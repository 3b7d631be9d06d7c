#!/usr/bin/env bash
# Memory bound: is TASKGATE_CACHE_MAX_BYTES a real bound on RSS? For each allocator and each
# setting (64 MiB and 256 MiB), a fresh taskgate (as shipped: TASKGATE_LOG=info, stdout to
# /dev/null) is measured idle, then churned: completed tasks with distinct ids (1.2 KB bodies)
# are fetched through it until the misses add up to CHURN times the setting (by the weigher's
# count), and RSS is read 2 s later. Then the hit rate over 1000 cached ids (wrk, 5 s).
# Also, with --entry-cost: 100 000 distinct entries into a 1 GiB cache (never full): RSS growth
# per entry beside the body, the number ENTRY_OVERHEAD in src/cache/mod.rs is set from.
#
#   bash bench/memory.sh [--quick] [--entry-cost | --entry-cost-only] [--keep] [ALLOCATOR...]
#     ALLOCATOR: glibc, jemalloc, mimalloc (default: all three), run through LD_PRELOAD of
#     Debian's libjemalloc2 / libmimalloc2.0 (installed when missing) on the same binary;
#     NAME=PATH adds a binary of its own (e.g. built with a #[global_allocator]).
#     --quick   churn 2x instead of 5x
# Target (issue 18): RSS after churn <= 1.25 x setting + 16 MiB; idle RSS < 10 MiB.
# Everything on 127.0.0.1 at free ports, files under /dev/shm, all killed on exit; about
# 1.5 min per allocator. TASKGATE_BIN skips the cargo build. Figures: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/lib.sh

churn=5 entry_cost=0 keep=0 allocs=() settings="64 256"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) churn=2; shift ;;
        --entry-cost) entry_cost=1; shift ;;
        --entry-cost-only) entry_cost=1 settings=""; shift ;;
        --keep) keep=1; shift ;;
        -*) sed -n '2,20p' "$0" >&2; exit 64 ;;
        *) allocs+=("$1"); shift ;;
    esac
done
[ ${#allocs[@]} -gt 0 ] || allocs=(glibc jemalloc mimalloc)
say() { echo "memory: $*" >&2; }

missing=()
for t in nginx wrk curl python3; do command -v "$t" >/dev/null || missing+=("$t"); done
libdir=/usr/lib/x86_64-linux-gnu
for a in "${allocs[@]}"; do
    case $a in
        jemalloc) [ -e $libdir/libjemalloc.so.2 ] || missing+=(libjemalloc2) ;;
        mimalloc) [ -e $libdir/libmimalloc.so.2 ] || missing+=(libmimalloc2.0) ;;
    esac
done
install_missing memory "${missing[@]}"
bin=$(taskgate_bin)

tmp=$(mktemp -d -p /dev/shm taskgate-memory.XXXXXX 2>/dev/null || mktemp -d /tmp/taskgate-memory.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() { stop_pids; if [ "$keep" = 1 ]; then say "files kept in $tmp"; else rm -rf "$tmp"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# The upstream: done-0..999 from files, any gen-* id from a template (a body of its own).
start_task_upstream "$tmp" 1000 >/dev/null
wait_http "http://127.0.0.1:$up_port/api/task/done-0"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {s += $2} END {printf "%d\n", s}'; }
misses() { curl -s "http://127.0.0.1:$1/metrics" |
    awk '/^taskgate_requests_total\{/ && /cache="MISS"/ {s += $2} END {printf "%d\n", s}'; }

start() {  # NAME ALLOC SETTING -> port, adm, pid
    local name=$1 alloc=$2 setting=$3 exe=$bin preload=
    case $alloc in
        glibc) ;;
        jemalloc) preload=$libdir/libjemalloc.so.2 ;;
        mimalloc) preload=$libdir/libmimalloc.so.2 ;;
        *=*) exe=${alloc#*=} ;;
        *) say "unknown allocator $alloc"; exit 64 ;;
    esac
    port=$(free_port) adm=$(free_port)
    (cd "$tmp" && exec env -i PATH="$PATH" ${preload:+LD_PRELOAD=$preload} \
        TASKGATE_API_KEY=bench-key TASKGATE_UPSTREAM_URL="http://127.0.0.1:$up_port/api" \
        TASKGATE_LISTEN="127.0.0.1:$port" TASKGATE_ADMIN_LISTEN="127.0.0.1:$adm" \
        TASKGATE_RATE_LIMIT=0 TASKGATE_TRUST_FORWARDED=true TASKGATE_CACHE_MAX_BYTES="$setting" TASKGATE_LOG=info \
        "$exe") >/dev/null 2>"$tmp/$name.err" & pid=$!
    pids+=($pid)
    wait_ready "$adm" "$tmp/$name.err"
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

results=$tmp/results.tsv
: >"$results"
run=0
for alloc in "${allocs[@]}"; do
    name=${alloc%%=*}
    if [ "$entry_cost" = 1 ]; then
        say "$name: per-entry cost, 100 000 distinct entries into a 1 GiB cache"
        start "$name-cost" "$alloc" 1GiB
        sleep 1; idle=$(rss_kib "$pid")
        run=$((run + 1)); n=0
        while [ "$n" -lt 100000 ]; do
            wrk -t2 -c64 -d2s -s bench/memory/churn.lua "http://127.0.0.1:$port" -- "c$run-$n" >/dev/null
            n=$(metric "$adm" taskgate_cache_entries)
        done
        sleep 2
        full=$(rss_kib "$pid"); entries=$(metric "$adm" taskgate_cache_entries)
        bytes=$(metric "$adm" taskgate_cache_bytes)
        echo -e "cost\t$name\t$idle\t$full\t$entries\t$bytes" >>"$results"
        stop
    fi
    for setting in $settings; do
        say "$name: ${setting} MiB, churned ${churn}x by distinct ids"
        start "$name-$setting" "$alloc" "${setting}MiB"
        sleep 1; idle=$(rss_kib "$pid")
        run=$((run + 1)); t0=$(date +%s)
        while :; do
            wrk -t2 -c64 -d3s -s bench/memory/churn.lua "http://127.0.0.1:$port" -- "r$run-$(date +%s%N)" >/dev/null
            m=$(misses "$adm"); b=$(metric "$adm" taskgate_cache_bytes); e=$(metric "$adm" taskgate_cache_entries)
            # misses x the weight of one entry >= churn x the setting (or 5 min at most)
            [ "$e" -gt 0 ] && [ $((m * (b / e))) -ge $((churn * setting * 1048576)) ] && break
            [ $(( $(date +%s) - t0 )) -lt 300 ] || { say "churn stopped at 5 min"; break; }
        done
        sleep 2
        full=$(rss_kib "$pid"); hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
        entries=$(metric "$adm" taskgate_cache_entries); bytes=$(metric "$adm" taskgate_cache_bytes)
        wrk -t2 -c64 -d2s -s bench/compare/hits.lua "http://127.0.0.1:$port" -- /task/done- 1000 >/dev/null
        rps=$(wrk -t2 -c64 -d5s -s bench/compare/hits.lua "http://127.0.0.1:$port" -- /task/done- 1000 |
            awk '/Requests\/sec/ {printf "%d", $2}')
        dropped=$(metric "$adm" taskgate_log_events_dropped_total)
        echo -e "bound\t$name\t$setting\t$idle\t$full\t$hwm\t$entries\t$bytes\t$m\t$rps\t$dropped" >>"$results"
        stop
    done
done

python3 - "$results" "$bin" <<'PY'
import os, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
mib = lambda kib: f"{int(kib) / 1024:.1f}"
cost = [r for r in rows if r[0] == "cost"]
if cost:
    print("\nPer-entry cost: 100 000 distinct completed tasks (1.2 KB bodies) into a 1 GiB cache")
    print("  allocator  idle RSS MiB  RSS MiB  entries  RSS growth per entry B  weighed per entry B")
    for _, name, idle, full, entries, weighed in cost:
        e = max(1, int(entries))
        print(f"  {name:<9}  {mib(idle):>12}  {mib(full):>7}  {e:>7}  {(int(full) - int(idle)) * 1024 / e:>22.0f}"
              f"  {int(weighed) / e:>19.0f}")
print(f"\nBound: TASKGATE_CACHE_MAX_BYTES, churned by distinct ids; target RSS <= 1.25 x setting + 16 MiB, idle < 10 MiB")
print(f"  binary {sys.argv[2]} ({os.path.getsize(sys.argv[2])} B)")
print("  allocator  setting  idle RSS  RSS after churn  peak RSS  RSS/setting  bound   result  entries  cache MiB  misses   hit req/s  log lines dropped")
ok = True
for _, name, setting, idle, full, hwm, entries, weighed, misses, rps, dropped in (r for r in rows if r[0] == "bound"):
    s = int(setting)
    bound = 1.25 * s + 16
    good = int(full) / 1024 <= bound and int(idle) < 10 * 1024
    ok &= good
    print(f"  {name:<9}  {s:>4} MiB  {mib(idle):>8}  {mib(full):>15}  {mib(hwm):>8}  {int(full) / 1024 / s:>10.2f}x"
          f"  {bound:>5.0f}   {'PASS' if good else 'MISS':<6}  {entries:>7}  {int(weighed) / 2**20:>9.1f}  {misses:>7}"
          f"  {rps:>9}  {dropped}")
sys.exit(0 if ok else 1)
PY
