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
