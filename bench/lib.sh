# Sourced by the bench scripts (from the repository root): free loopback ports, the binary
# under test, waiting for servers, and stopping what a script started (listed in `pids`).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The taskgate binary to measure: $TASKGATE_BIN, or a release build of this checkout.
taskgate_bin() {
    if [ -n "${TASKGATE_BIN:-}" ]; then
        echo "$TASKGATE_BIN"
    else
        cargo build --release --locked --quiet >&2
        echo "$PWD/target/release/taskgate"
    fi
}

install_missing() {  # WHO PACKAGE...: the Debian packages given, if any (apt-get update first)
    local who=$1; shift
    [ $# -gt 0 ] || return 0
    echo "$who: installing $* from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_http() {   # URL: until it answers at all (any status), at most 10 s
    for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done
    echo "$1 never answered" >&2; return 1
}

wait_ready() {  # ADMIN_PORT LOG: until taskgate's /readyz is 200, at most 10 s; else its log
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "taskgate (admin port $1) never became ready:" >&2; cat "$2" >&2 2>/dev/null; return 1
}

stop_pids() {   # kill and reap every process in `pids`
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}

nginx_head() {  # DIR WORKERS: the start of an nginx.conf kept in DIR (pid, logs, temp files
                # there), up to inside `http {`; the caller writes the rest and the closing `}`
    cat <<HEAD
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $1/body; proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
HEAD
}

start_nginx_in() {  # DIR: nginx in the foreground on DIR/nginx.conf; its pid appended to pids
    nginx -e "$1/error.log" -p "$1" -c "$1/nginx.conf" -g 'daemon off;' & pids+=($!)
}

start_task_upstream() {  # TMP N: nginx on a free port (sets up_port) serving the task files
    # done-0..N-1 (completed) and run-0..N-1 (running) written to TMP/www, and any gen-* id from
    # a template with the id written in four places (a body of its own). tasks.py's summary of
    # the bodies goes to stdout.
    python3 bench/compare/tasks.py files "$1/www" "$2"
    local template
    template=$(python3 bench/compare/tasks.py template)
    up_port=$(free_port)
    mkdir -p "$1/up"
    { nginx_head "$1/up" auto; cat <<EOF
    keepalive_requests 1000000;
    types { }
    default_type application/json;
    server {
        listen 127.0.0.1:$up_port backlog=4096;
        root $1/www;
        location ~ "^/api/task/(gen-[A-Za-z0-9-]{1,60})\$" { return 200 '$template'; }
        location /api/task/ { try_files \$uri =404; }
        location / { return 404; }
    }
}
EOF
    } >"$1/up/nginx.conf"
    start_nginx_in "$1/up"
}
