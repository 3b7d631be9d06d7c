#!/usr/bin/env bash
# Compare: taskgate against nginx configured as the caching proxy a user would otherwise
# write (proxy_cache keyed on the task id, proxy_cache_lock, proxy_cache_valid 200 24h, cache
# on tmpfs, worker_processes auto), on one machine in one run, and print a side-by-side
# report with the targets of the issue, each PASS or MISS:
#   (a) cache hits: wrk max throughput at 64 connections (3 interleaved rounds) against
#       nginx and against a bare hyper server answering the same bytes (the ceiling,
#       bench/compare/ceiling), then oha at a constant rate (half of nginx's max) with latency
#       correction (no coordinated omission): p50/p99/p99.9 (5 rounds); medians reported
#   (a') as shipped: the same hits with access logs on, taskgate's default (TASKGATE_LOG=info,
#       JSON events on stdout) vs nginx's default access_log, both to a file on tmpfs; and
#       pass-through of running tasks at max throughput, as shipped, vs nginx proxy_pass
#       (3 interleaved rounds each; log lines written and dropped are counted)
#   (b) pass-through of a running task: taskgate vs the upstream directly (and vs nginx
#       without its cache), oha at a constant 1000 req/s
#   (c) coalescing: 200 simultaneous requests for one cold id against a 200 ms upstream,
#       upstream calls counted, for a completed and for a running task
#   (d) memory: idle RSS, and RSS after caching 100 000 distinct completed tasks
#   (e) start-up time to /readyz 200, release binary size
# Everything on 127.0.0.1 at free ports, temp files in /dev/shm; all killed on exit.
#
#   bash bench/compare.sh [--quick] [--strict] [--keep]
#     --quick   about 2.5 min instead of about 5: shorter runs, one round, 20 000 tasks in (d)
#     --strict  exit 1 when a target is missed
#     --keep    keep the temp dir (configs, raw wrk/oha outputs, results/*.json)
# Installs nginx, wrk, curl from Debian when missing, and oha into bench/.tools with cargo
# (once: about 7 min on 2 cores, not counted above). TASKGATE_BIN skips the cargo build; the
# ceiling is built into target/ceiling (once: about 30 s).
# Method, figures and limits: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/lib.sh

quick=0 strict=0 keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; shift ;;
        --strict) strict=1; shift ;;
        --keep) keep=1; shift ;;
        *) sed -n '2,25p' "$0" >&2; exit 64 ;;
    esac
done
if [ "$quick" = 1 ]; then
    warm=2 hit_d=5 rounds=1 rate_d=5 rate_rounds=1 pass_d=5 pass_rounds=1 fill_n=20000 starts=3
else
    warm=3 hit_d=8 rounds=3 rate_d=6 rate_rounds=5 pass_d=8 pass_rounds=2 fill_n=100000 starts=5
fi
conns=64 threads=2 hot_ids=1000 burst_n=200 slow_delay=0.2 pass_rate=1000
oha_version=1.16.0
t_start=$(date +%s)
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in the tree
say() { echo "compare: $*" >&2; }

# --- tools --------------------------------------------------------------------------------
missing=()
for t in nginx wrk curl python3; do command -v "$t" >/dev/null || missing+=("$t"); done
install_missing compare "${missing[@]}"
oha=$root/bench/.tools/bin/oha
if [ ! -x "$oha" ]; then
    say "building oha $oha_version into bench/.tools (once; a few minutes)"
    cargo install oha --version "$oha_version" --locked --root "$root/bench/.tools" --quiet
fi

[ -n "${TASKGATE_BIN:-}" ] || say "cargo build --release --locked"
bin=$(taskgate_bin)
say "building the bare-hyper ceiling (bench/compare/ceiling)"
cargo build --release --locked --quiet --manifest-path bench/compare/ceiling/Cargo.toml \
    --target-dir "$root/target/ceiling"
ceiling=$root/target/ceiling/release/bare-hyper

# --- temp dir, processes, cleanup ---------------------------------------------------------
tmp=$(mktemp -d -p /dev/shm taskgate-compare.XXXXXX 2>/dev/null ||
      mktemp -d /tmp/taskgate-compare.XXXXXX)
chmod 755 "$tmp"   # nginx workers run as nobody
res=$tmp/results
mkdir -p "$res"
pids=()
cleanup() {
    stop_pids
    if [ "$keep" = 1 ]; then say "files kept in $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

procstat() { python3 bench/compare/procstat.py "$1"; }
busy() { python3 bench/compare/procstat.py busy $$; }   # other processes using the cores
busy >"$res/busy-start.json"

# --- the machine --------------------------------------------------------------------------
python3 - "$res/machine.json" "$bin" "$oha" <<'PY'
import json, os, platform, subprocess, sys
out, bin_path, oha = sys.argv[1:4]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
ver = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip() + \
    subprocess.run(cmd, capture_output=True, text=True).stderr.strip()
json.dump({"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem / 2**20),
           "kernel": platform.release(), "nginx": ver("nginx", "-v").split("/")[-1],
           "wrk": ver("wrk", "-v").split()[1], "oha": ver(oha, "--version").split()[-1],
           "taskgate": ver(bin_path, "--version").split()[-1],
           "binary_bytes": os.path.getsize(bin_path),
           "commit": ver("git", "rev-parse", "--short", "HEAD"),
           "dirty": bool(ver("git", "status", "--porcelain", "--untracked-files=no"))},
          open(out, "w"))
PY

# --- upstreams ----------------------------------------------------------------------------
# Fast: nginx serving static task files (done-0..999 completed, run-0..999 running), and any
# gen-* id from a template with the id written in four places (distinct bodies for (d)).
start_task_upstream "$tmp" "$hot_ids" >"$res/bodies.json"
slow_port=$(free_port)
python3 bench/compare/slow_upstream.py "$slow_port" "$slow_delay" & pids+=($!)
wait_http "http://127.0.0.1:$up_port/api/task/done-0"
wait_http "http://127.0.0.1:$slow_port/stats"

# --- reference nginx ----------------------------------------------------------------------
# What a user would write: cache keyed on the id, one fetch per cold key (proxy_cache_lock),
# 200s kept 24 h. It cannot see the phase in the body, so it keeps running tasks too.
ngx_port=$(free_port) ngx_slow_port=$(free_port) ngx_nocache_port=$(free_port) ngx_log_port=$(free_port)
ngx_nocache_log_port=$(free_port)
mkdir -p "$tmp/ngx/cache" "$tmp/ngx/cache-slow"
chmod 777 "$tmp/ngx" "$tmp/ngx/cache" "$tmp/ngx/cache-slow"
proxy_common='proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Authorization "Bearer bench-key";'
{ nginx_head "$tmp/ngx" auto; cat <<EOF
    keepalive_requests 1000000;
    upstream fast { server 127.0.0.1:$up_port; keepalive 64; }
    upstream slow { server 127.0.0.1:$slow_port; keepalive 64; }
    proxy_cache_path $tmp/ngx/cache levels=1:2 keys_zone=tasks:64m max_size=4g inactive=24h use_temp_path=off;
    proxy_cache_path $tmp/ngx/cache-slow levels=1:2 keys_zone=slow:1m inactive=24h use_temp_path=off;
    server {
        listen 127.0.0.1:$ngx_port backlog=4096;
        location ~ "^/(?:api/)?task/([A-Za-z0-9-]{1,64})\$" {
            proxy_pass http://fast/api/task/\$1; $proxy_common
            proxy_cache tasks; proxy_cache_key \$1; proxy_cache_valid 200 24h; proxy_cache_lock on;
            add_header x-cache \$upstream_cache_status always;
        }
        location / { return 404; }
    }
    server {
        listen 127.0.0.1:$ngx_slow_port backlog=4096;
        location ~ "^/(?:api/)?task/([A-Za-z0-9-]{1,64})\$" {
            proxy_pass http://slow/api/task/\$1; $proxy_common
            proxy_cache slow; proxy_cache_key \$1; proxy_cache_valid 200 24h; proxy_cache_lock on;
            add_header x-cache \$upstream_cache_status always;
        }
    }
    server {   # the same cache, as shipped: nginx's default access log (combined, to a file)
        listen 127.0.0.1:$ngx_log_port backlog=4096;
        access_log $tmp/ngx/access.log;
        location ~ "^/(?:api/)?task/([A-Za-z0-9-]{1,64})\$" {
            proxy_pass http://fast/api/task/\$1; $proxy_common
            proxy_cache tasks; proxy_cache_key \$1; proxy_cache_valid 200 24h; proxy_cache_lock on;
            add_header x-cache \$upstream_cache_status always;
        }
    }
    server {   # no cache: the pass-through reference
        listen 127.0.0.1:$ngx_nocache_port backlog=4096;
        location ~ "^/(?:api/)?task/([A-Za-z0-9-]{1,64})\$" {
            proxy_pass http://fast/api/task/\$1; $proxy_common
        }
    }
    server {   # no cache, as shipped (access log on)
        listen 127.0.0.1:$ngx_nocache_log_port backlog=4096;
        access_log $tmp/ngx/access-pass.log;
        location ~ "^/(?:api/)?task/([A-Za-z0-9-]{1,64})\$" {
            proxy_pass http://fast/api/task/\$1; $proxy_common
        }
    }
}
EOF
} >"$tmp/ngx/nginx.conf"
start_nginx_in "$tmp/ngx"; ngx_pid=${pids[-1]}
wait_http "http://127.0.0.1:$ngx_port/"

# --- taskgate -----------------------------------------------------------------------------
start_taskgate() {  # name upstream_url extra-env... -> sets tg_port, tg_adm, tg_pid
    tg_port=$(free_port); tg_adm=$(free_port)
    # From $tmp: no config/taskgate.toml is picked up; the environment says everything.
    # TASKGATE_TRUST_FORWARDED: warm-ups and fills send X-Forwarded-For over many addresses,
    # or taskgate's per-client budget of upstream calls (20/s) would refuse most of their
    # misses from the one load-generating address (and leave the cache cold).
    (cd "$tmp" && exec env -i PATH="$PATH" \
        TASKGATE_API_KEY=bench-key TASKGATE_UPSTREAM_URL="$2" \
        TASKGATE_LISTEN="127.0.0.1:$tg_port" TASKGATE_ADMIN_LISTEN="127.0.0.1:$tg_adm" \
        TASKGATE_RATE_LIMIT=0 TASKGATE_CACHE_MAX_BYTES=1GiB TASKGATE_LOG=warn \
        TASKGATE_TRUST_FORWARDED=true \
        "${@:3}" "$bin") >"$tmp/$1.log" 2>&1 & tg_pid=$!
    pids+=($tg_pid)
    wait_ready "$tg_adm" "$tmp/$1.log"
}
# The per-client budget of upstream calls is off where one address sends every request ((b),
# (c)); the as-shipped instance below keeps it and spreads its requests over X-Forwarded-For.
start_taskgate tg "http://127.0.0.1:$up_port/api" TASKGATE_MISS_RATE=0
tg_port_main=$tg_port tg_adm_main=$tg_adm tg_pid_main=$tg_pid
start_taskgate tg-slow "http://127.0.0.1:$slow_port/api" TASKGATE_MISS_RATE=0
tgs_port=$tg_port tgs_adm=$tg_adm

check_header() {  # url header expected
    local got
    got=$(curl -s -D - -o /dev/null "$1" | tr -d '\r' | awk -F': ' -v h="$2" 'tolower($1) == h {print $2}')
    [ "$got" = "$3" ] || { say "$1: $2 is '$got', expected '$3'"; exit 1; }
}

wrk_run() {  # name pid url lua-args... : wrk with CPU time of the server process tree
    local name=$1 pid=$2 url=$3; shift 3
    procstat "$pid" >"$res/$name.cpu0.json"
    wrk --latency -t"$threads" -c"$conns" -d"${hit_d}s" -s bench/compare/hits.lua "$url" -- "$@" \
        >"$res/$name.wrk.txt"
    procstat "$pid" >"$res/$name.cpu1.json"
}
oha_run() {  # name rate seconds conns url-regex
    "$oha" --no-tui --output-format json --latency-correction \
        -q "$2" -z "${3}s" -c "$4" --rand-regex-url "$5" >"$res/$1.oha.json"
}
ids_re="(0|[1-9][0-9]{0,2})"   # 0..999, as tasks.py numbered them

# --- (a) cache hits -----------------------------------------------------------------------
say "(a) cache hits: warm-up ${warm}s each, then ${rounds} x ${hit_d}s of wrk -t$threads -c$conns per proxy"
for url in "http://127.0.0.1:$tg_port_main" "http://127.0.0.1:$ngx_port"; do
    wrk -t"$threads" -c"$conns" -d"${warm}s" -s bench/compare/hits.lua "$url" -- /task/done- "$hot_ids" xff >/dev/null
done
check_header "http://127.0.0.1:$tg_port_main/task/done-7" x-cache HIT
check_header "http://127.0.0.1:$ngx_port/task/done-7" x-cache HIT
# The ceiling: a bare hyper server replaying taskgate's hit answers byte for byte.
python3 bench/compare/capture.py "$tg_port_main" /task/done- "$hot_ids" "$tmp/hits.json"
hy_port=$(free_port)
"$ceiling" "$hy_port" "$tmp/hits.json" & hy_pid=$!; pids+=($hy_pid)
wait_http "http://127.0.0.1:$hy_port/task/done-0"
check_header "http://127.0.0.1:$hy_port/task/done-7" x-cache HIT
wrk -t"$threads" -c"$conns" -d"${warm}s" -s bench/compare/hits.lua "http://127.0.0.1:$hy_port" -- /task/done- "$hot_ids" >/dev/null
for r in $(seq "$rounds"); do
    wrk_run "hit-taskgate-$r" "$tg_pid_main" "http://127.0.0.1:$tg_port_main" /task/done- "$hot_ids"
    wrk_run "hit-nginx-$r" "$ngx_pid" "http://127.0.0.1:$ngx_port" /task/done- "$hot_ids"
    wrk_run "hit-hyper-$r" "$hy_pid" "http://127.0.0.1:$hy_port" /task/done- "$hot_ids"
done

# --- (a') as shipped ------------------------------------------------------------------------
# taskgate's default logging (TASKGATE_LOG=info: one JSON event per request on stdout, here
# to a file on tmpfs) against nginx's default access_log (combined format, to a file on tmpfs).
say "(a') as shipped (access logs on): ${rounds} x ${hit_d}s of hits, then of pass-through, per proxy"
# The pass-through rounds send X-Forwarded-For over 4096 addresses (to nginx too, which
# ignores it), for taskgate's per-client budget of upstream calls (see start_taskgate).
start_taskgate tg-log "http://127.0.0.1:$up_port/api" TASKGATE_LOG=info
tgl_pid=$tg_pid tgl_port=$tg_port tgl_adm=$tg_adm
for url in "http://127.0.0.1:$tgl_port" "http://127.0.0.1:$ngx_log_port"; do
    wrk -t"$threads" -c"$conns" -d"${warm}s" -s bench/compare/hits.lua "$url" -- /task/done- "$hot_ids" xff >/dev/null
done
check_header "http://127.0.0.1:$ngx_log_port/task/done-7" x-cache HIT
for r in $(seq "$rounds"); do
    wrk_run "ship-hit-taskgate-$r" "$tgl_pid" "http://127.0.0.1:$tgl_port" /task/done- "$hot_ids"
    wrk_run "ship-hit-nginx-$r" "$ngx_pid" "http://127.0.0.1:$ngx_log_port" /task/done- "$hot_ids"
done
for url in "http://127.0.0.1:$tgl_port" "http://127.0.0.1:$ngx_nocache_log_port"; do
    wrk -t"$threads" -c"$conns" -d1s -s bench/compare/hits.lua "$url" -- /task/run- "$hot_ids" xff >/dev/null
done
for r in $(seq "$rounds"); do
    wrk_run "ship-pass-taskgate-$r" "$tgl_pid" "http://127.0.0.1:$tgl_port" /task/run- "$hot_ids" xff
    wrk_run "ship-pass-nginx-$r" "$ngx_pid" "http://127.0.0.1:$ngx_nocache_log_port" /task/run- "$hot_ids" xff
done
curl -s "http://127.0.0.1:$tgl_adm/metrics" >"$res/ship-taskgate.metrics"
kill "$tgl_pid"; wait "$tgl_pid" 2>/dev/null || true
python3 - "$tmp/tg-log.log" "$tmp/ngx/access.log" "$tmp/ngx/access-pass.log" >"$res/ship-lines.json" <<'PY'
import json, sys
def lines(p):
    try:
        return sum(1 for _ in open(p, "rb"))
    except OSError:
        return 0
tg = 0
for l in open(sys.argv[1], "rb"):
    tg += b'"target":"taskgate::access"' in l
print(json.dumps({"taskgate_access_events": tg, "nginx_lines": lines(sys.argv[2]) + lines(sys.argv[3])}))
PY
rm -f "$tmp/ngx/access.log" "$tmp/ngx/access-pass.log" "$tmp/tg-log.log"

rate=$(python3 - "$res" <<'PY'
import glob, re, sys
rps = sorted(float(re.search(r"Requests/sec:\s+([\d.]+)", open(f).read()).group(1))
             for f in glob.glob(sys.argv[1] + "/hit-nginx-[0-9]*.wrk.txt"))
print(int(rps[(len(rps) - 1) // 2] / 2))   # half of nginx's median round
PY
)
say "(a) constant rate: ${rate} req/s (half nginx's median max), ${rate_rounds} x ${rate_d}s each, oha --latency-correction"
for r in $(seq "$rate_rounds"); do
    oha_run "hit-taskgate-$r" "$rate" "$rate_d" "$conns" "http://127.0.0.1:$tg_port_main/task/done-$ids_re"
    oha_run "hit-nginx-$r" "$rate" "$rate_d" "$conns" "http://127.0.0.1:$ngx_port/task/done-$ids_re"
done

# --- (b) pass-through ---------------------------------------------------------------------
say "(b) pass-through of running tasks: ${pass_rate} req/s for ${pass_d}s each: upstream direct, taskgate, nginx (no cache)"
check_header "http://127.0.0.1:$tg_port_main/task/run-3" x-cache PASS
curl -s "http://127.0.0.1:$tg_adm_main/metrics" >"$res/pass-before.metrics"
for r in $(seq "$pass_rounds"); do   # rounds interleaved; a 1 s run first warms connections
    for who in direct taskgate nginx; do
        case $who in
            direct) url="http://127.0.0.1:$up_port/api/task/run-$ids_re" ;;
            taskgate) url="http://127.0.0.1:$tg_port_main/task/run-$ids_re" ;;
            nginx) url="http://127.0.0.1:$ngx_nocache_port/task/run-$ids_re" ;;
        esac
        oha_run warm "$pass_rate" 1 8 "$url"
        oha_run "pass-$who-$r" "$pass_rate" "$pass_d" 8 "$url"
    done
done
curl -s "http://127.0.0.1:$tg_adm_main/metrics" >"$res/pass-after.metrics"

# --- (c) coalescing -----------------------------------------------------------------------
say "(c) coalescing: $burst_n simultaneous requests for one cold id, upstream answers after ${slow_delay}s"
for who in taskgate nginx; do
    port=$tgs_port; [ "$who" = nginx ] && port=$ngx_slow_port
    for kind in done run; do
        id="$kind-cold-$who"
        python3 bench/compare/burst.py "$port" "/task/$id" "$burst_n" >"$res/burst-$who-$kind.json"
        curl -s "http://127.0.0.1:$slow_port/stats" >"$res/burst-$who-$kind.calls.json"
        # What the next poll gets: a running task must not be served from a cache.
        curl -s -D - -o /dev/null "http://127.0.0.1:$port/task/$id" | tr -d '\r' |
            awk -F': ' 'tolower($1) == "x-cache" {print $2}' >"$res/burst-$who-$kind.next"
    done
done

# --- (d) memory ---------------------------------------------------------------------------
say "(d) memory: a fresh taskgate, idle, then $fill_n distinct completed tasks through it (and through nginx)"
start_taskgate tg-mem "http://127.0.0.1:$up_port/api" TASKGATE_MISS_RATE=0
sleep 1
procstat "$tg_pid" >"$res/mem-taskgate-idle.json"
procstat "$ngx_pid" >"$res/mem-nginx-before.json"
# Distinct ids (bench/memory/churn.lua: gen-RUN-THREAD-N, each request from another
# X-Forwarded-For address) until taskgate has fill_n entries (at most 2 min), then the same
# number of requests through nginx; wrk runs 2 s at a time.
fill_rps() {  # port min-requests -> total req/s of the wrk runs, until enough entries/requests
    local port=$1 want=$2 n=0 got=0 t=0 k=0 out
    while [ "$got" -lt "$want" ] && [ "$t" -lt 120 ]; do
        k=$((k + 1))
        out=$(wrk -t"$threads" -c"$conns" -d2s -s bench/memory/churn.lua "http://127.0.0.1:$port" -- "f$port-$k")
        n=$((n + $(echo "$out" | awk '/requests in/ {print $1}')))
        t=$((t + 2))
        if [ "$port" = "$tg_port" ]; then
            got=$(curl -s "http://127.0.0.1:$tg_adm/metrics" | awk '$1 == "taskgate_cache_entries" {print int($2)}')
        else
            got=$n
        fi
    done
    echo "{\"summary\": {\"requestsPerSec\": $((n / t))}, \"latencyPercentiles\": {\"p50\": 0, \"p99\": 0, \"p99.9\": 0}, \"requests\": $n}"
}
fill_rps "$tg_port" "$fill_n" >"$res/fill-taskgate.oha.json"
fill_rps "$ngx_port" "$fill_n" >"$res/fill-nginx.oha.json"
sleep 2
procstat "$tg_pid" >"$res/mem-taskgate-full.json"
curl -s "http://127.0.0.1:$tg_adm/metrics" >"$res/mem-taskgate.metrics"
procstat "$ngx_pid" >"$res/mem-nginx-full.json"
python3 - "$tmp/ngx/cache" "$res/mem-nginx-cache.json" <<'PY'
import json, os, sys
files = used = apparent = 0
for d, _, names in os.walk(sys.argv[1]):
    for n in names:
        st = os.stat(os.path.join(d, n))
        files += 1; apparent += st.st_size; used += st.st_blocks * 512
json.dump({"files": files, "apparent_bytes": apparent, "used_bytes": used}, open(sys.argv[2], "w"))
PY
kill "$tg_pid"; wait "$tg_pid" 2>/dev/null || true

# --- (e) start-up ---------------------------------------------------------------------------
say "(e) start-up: $starts starts to /readyz 200"
(cd "$tmp" && env -i PATH="$PATH" TASKGATE_API_KEY=bench-key \
    TASKGATE_UPSTREAM_URL="http://127.0.0.1:$up_port/api" TASKGATE_LOG=warn \
    python3 "$root/bench/compare/startup.py" "$bin" "$starts" 1) >"$res/startup.json"

busy >"$res/busy-end.json"
echo "{\"seconds\": $(( $(date +%s) - t_start )), \"quick\": $quick, \"rate\": $rate, \"pass_rate\": $pass_rate, \"conns\": $conns, \"threads\": $threads, \"hit_d\": $hit_d, \"rate_d\": $rate_d, \"pass_d\": $pass_d, \"rounds\": $rounds, \"pass_rounds\": $pass_rounds, \"burst_n\": $burst_n, \"slow_delay\": $slow_delay, \"fill_n\": $fill_n}" \
    >"$res/run.json"
status=0
python3 bench/compare/report.py "$res" || status=$?
say "done in $(( $(date +%s) - t_start )) s"
if [ "$strict" = 1 ]; then exit "$status"; fi
