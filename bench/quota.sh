#!/usr/bin/env bash
# Quota economy: how many Studio API calls do K browser tabs following T tasks cost, and how
# late do they see each status change, behind
#   naive        nginx proxy_pass, no cache
#   nginx-1s     nginx with a 1 s micro-cache (proxy_cache_valid 200 1s; proxy_cache_lock on)
#   taskgate     taskgate, TTL_PENDING off (unfinished tasks pass through, coalesced)
#   taskgate-pending  taskgate, TTL_PENDING = the tabs' polling period
#   taskgate-watch    taskgate, each tab holds one SSE stream per task instead of polling
#   naive-lag    naive, but the API's GETs lag --replica-lag s behind (the baseline for
#                taskgate-webhooks, whose API lags the same)
#   taskgate-webhooks taskgate, plain polling, TASKGATE_WEBHOOK_TRUST_TTL=60s: the simulated
#                     API announces every change with a signed `task.updated` webhook
#                     (--webhook-delay s after it) and its GETs lag --replica-lag s behind
#                     (a read from a lagging database replica)
#   (optional, with --only: taskgate-pending-1s, TTL_PENDING = 1 s like nginx-1s's cache)
# and the asset polling pattern of Studio's dashboard (GET /asset/{id}?details=1 every
# --asset-period s until `ready`, then stop), with the same clock (waiting -> processing ->
# ready), behind
#   asset-naive           nginx proxy_pass, no cache (the baseline of the asset table)
#   asset-taskgate        taskgate, plain polling (unfinished assets pass through, coalesced)
#   asset-watch-webhooks  taskgate, each tab holds one SSE stream per asset; the simulated API
#                         announces every change with a signed Studio webhook, so taskgate's
#                         watchers fetch on each change instead of on an interval
#   (optional, with --only: asset-watch, watches refreshed every --asset-period s, no webhooks)
# The API is simulated (bench/quota/upstream.py): tasks go waiting -> running (progress
# updates) -> completed on a clock; each body carries its version, so the tabs
# (bench/quota/tabs.py) know how late every answer was. Loopback only; stops by itself.
#
#   bash bench/quota.sh [--tabs 50] [--tasks 20] [--period 2] [--wait 2] [--run 16]
#                       [--stagger 4] [--progress-every 4] [--linger 15] [--asset-period 5]
#                       [--webhook-delay 0.2] [--replica-lag 0.1]
#                       [--only naive,nginx-1s,taskgate,taskgate-pending,taskgate-watch,
#                               naive-lag,taskgate-webhooks,asset-naive,asset-taskgate,
#                               asset-watch-webhooks]
# Needs python3 (3.11), curl, nginx (Debian: apt-get install -y nginx). TASKGATE_BIN skips
# the cargo build. Writes per-scenario JSON to a temp dir (kept with --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/lib.sh

tabs=50 tasks=20 period=2 wait=2 run=16 stagger=4 progress_every=4 linger=15 asset_period=5
only="naive,nginx-1s,taskgate,taskgate-pending,taskgate-watch,naive-lag,taskgate-webhooks,asset-naive,asset-taskgate,asset-watch-webhooks"
webhook_delay=0.2 replica_lag=0.1
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --tabs) tabs="$2"; shift 2 ;;
        --tasks) tasks="$2"; shift 2 ;;
        --period) period="$2"; shift 2 ;;
        --wait) wait="$2"; shift 2 ;;
        --run) run="$2"; shift 2 ;;
        --stagger) stagger="$2"; shift 2 ;;
        --progress-every) progress_every="$2"; shift 2 ;;
        --linger) linger="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --asset-period) asset_period="$2"; shift 2 ;;
        --webhook-delay) webhook_delay="$2"; shift 2 ;;
        --replica-lag) replica_lag="$2"; shift 2 ;;
        *) sed -n '2,36p' "$0" >&2; exit 64 ;;
    esac
done

command -v nginx >/dev/null || case ",$only," in *,naive,*|*,naive-lag,*|*,nginx-1s,*|*,asset-naive,*)
    echo "quota: nginx is missing (Debian: apt-get install -y nginx)" >&2; exit 69 ;; esac

period_ms=$(python3 -c "print(round(float('$period') * 1000))")
asset_period_ms=$(python3 -c "print(round(float('$asset_period') * 1000))")
webhook_secret=quota-webhook-secret

bin=$(taskgate_bin)

tmp=$(mktemp -d /tmp/taskgate-quota.XXXXXX)
chmod 755 "$tmp"   # nginx workers drop to nobody
pids=()
cleanup() { stop_pids; [ "$keep" = 1 ] && echo "quota: files kept in $tmp" || rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM


start_upstream() {  # tag kind [upstream.py args...] -> sets up_port
    up_port=$(free_port)
    python3 bench/quota/upstream.py --port "$up_port" --mode lifecycle --tasks "$tasks" \
        --wait "$wait" --run "$run" --stagger "$stagger" --progress-every "$progress_every" \
        --seed 1 --tag "$1" --kind "$2" "${@:3}" & pids+=($!)
    wait_http "http://127.0.0.1:$up_port/ctl/stats"
}

start_nginx() {  # name cache(0|1) -> sets px_port
    px_port=$(free_port)
    local d="$tmp/$1"; mkdir -p "$d/cache"; chmod 777 "$d" "$d/cache"
    local cache_http="" cache_loc=""
    if [ "$2" = 1 ]; then
        cache_http="proxy_cache_path $d/cache levels=1:2 keys_zone=tasks:10m max_size=100m inactive=60s use_temp_path=off;"
        cache_loc="proxy_cache tasks; proxy_cache_key \$1/\$2; proxy_cache_valid 200 1s; proxy_cache_lock on;
            add_header x-cache \$upstream_cache_status always;"
    fi
    { nginx_head "$d" 2; cat <<EOF
    keepalive_requests 100000;
    upstream studio { server 127.0.0.1:$up_port; keepalive 64; }
    $cache_http
    server {
        listen 127.0.0.1:$px_port;
        location ~ "^/(task|asset)/([A-Za-z0-9-]{1,64})\$" {
            proxy_pass http://studio/api/\$1/\$2;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer quota-key";
            $cache_loc
        }
        location / { return 404; }
    }
}
EOF
    } >"$d/nginx.conf"
    start_nginx_in "$d"
    wait_http "http://127.0.0.1:$px_port/"
}

start_taskgate() {  # extra env... -> sets px_port (unless preset), adm_port
    px_port=${px_port:-$(free_port)}; adm_port=$(free_port)
    # From $tmp: no config/taskgate.toml is picked up; the environment says everything.
    (cd "$tmp" && exec env -i PATH="$PATH" \
        TASKGATE_API_KEY=quota-key TASKGATE_UPSTREAM_URL="http://127.0.0.1:$up_port/api" \
        TASKGATE_LISTEN="127.0.0.1:$px_port" TASKGATE_ADMIN_LISTEN="127.0.0.1:$adm_port" \
        TASKGATE_RATE_LIMIT=0 TASKGATE_MISS_RATE=0 TASKGATE_WATCH_MAX_PER_CLIENT=100000 \
        TASKGATE_LOG=error "$@" "$bin") >"$tmp/$cur.log" 2>&1 & pids+=($!)
    wait_ready "$adm_port" "$tmp/$cur.log"
}

results=()
scenario() {  # name
    local name=$1 mode=poll kind=task every=$period stay=$linger query=""
    cur=$name
    echo "quota: $name ..." >&2
    px_port="" adm_port=""
    case "$name" in
        asset-*)
            # Studio's dashboard: GET /asset/{id}?details=1 every 5 s, stopping at ready.
            kind=asset every=$asset_period stay=0 query="?details=1"
            if [ "$name" = asset-watch-webhooks ]; then
                px_port=$(free_port)   # the simulated API posts its webhooks there
                start_upstream "${name//[^a-z0-9]/}" asset \
                    --webhook-url "http://127.0.0.1:$px_port/webhooks/livepeer" \
                    --webhook-secret "$webhook_secret"
            else
                start_upstream "${name//[^a-z0-9]/}" asset
            fi ;;
        taskgate-webhooks)
            px_port=$(free_port)
            start_upstream "${name//[^a-z0-9]/}" task \
                --webhook-url "http://127.0.0.1:$px_port/webhooks/livepeer" \
                --webhook-secret "$webhook_secret" --webhook-delay "$webhook_delay" \
                --replica-lag "$replica_lag" ;;
        naive-lag) start_upstream "${name//[^a-z0-9]/}" task --replica-lag "$replica_lag" ;;
        *) start_upstream "${name//[^a-z0-9]/}" task ;;
    esac
    case "$name" in
        naive|naive-lag) start_nginx "$name" 0 ;;
        nginx-1s) start_nginx "$name" 1 ;;
        taskgate) start_taskgate ;;
        taskgate-pending) start_taskgate TASKGATE_TTL_PENDING="${period_ms}ms" ;;
        taskgate-pending-1s) start_taskgate TASKGATE_TTL_PENDING=1s ;;  # optional: nginx-1s's TTL
        taskgate-watch) start_taskgate TASKGATE_WATCH_INTERVAL="${period_ms}ms"; mode=watch ;;
        # Unfinished answers kept until a webhook names them; 60 s is the lost-webhook net.
        taskgate-webhooks) start_taskgate TASKGATE_WEBHOOK_SECRET="$webhook_secret" \
            TASKGATE_WEBHOOK_TRUST_TTL=60s ;;
        asset-naive) start_nginx "$name" 0 ;;
        asset-taskgate) start_taskgate ;;
        asset-watch) start_taskgate TASKGATE_WATCH_INTERVAL="${asset_period_ms}ms"; mode=watch ;;
        # Webhooks refresh the watchers at once; the interval is only a safety net.
        asset-watch-webhooks) start_taskgate TASKGATE_WEBHOOK_SECRET="$webhook_secret" \
            TASKGATE_WATCH_INTERVAL=60s; mode=watch ;;
        *) echo "quota: unknown scenario $name" >&2; exit 64 ;;
    esac
    python3 bench/quota/tabs.py --base "http://127.0.0.1:$px_port" \
        --upstream "http://127.0.0.1:$up_port" --mode "$mode" --tabs "$tabs" \
        --period "$every" --linger "$stay" --kind "$kind" --query "$query" >"$tmp/$name.json"
    if [ -n "$adm_port" ]; then   # cross-check: taskgate's own count of upstream calls
        local n
        n=$(curl -s "http://127.0.0.1:$adm_port/metrics" |
            awk '/^taskgate_upstream_requests_total/ {s += $NF} END {print s + 0}')
        python3 - "$tmp/$name.json" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); r["proxy_upstream_calls"] = int(float(sys.argv[2]))
json.dump(r, open(sys.argv[1], "w"))
PY
    fi
    stop_pids
    results+=("$name=$tmp/$name.json")
}

start=$(date +%s)
echo "quota: $tabs tabs x $tasks tasks, poll every ${period}s, tasks waiting ${wait}s+0..${stagger}s," \
     "running ${run}s x0.75..1.25 (progress every ${progress_every}s), tabs go on ${linger}s after completion;" \
     "assets: polled every ${asset_period}s until ready" >&2
IFS=, read -ra names <<<"$only"
for n in "${names[@]}"; do scenario "$n"; done
python3 bench/quota/report.py "${results[@]}"
echo "quota: done in $(( $(date +%s) - start )) s"
