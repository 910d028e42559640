#!/usr/bin/env bash
# `make ui` / `make ui-stop`: the MLflow server (sqlite store ./mlflow.db, artifacts in
# ./mlartifacts: the store the training runs write) and the Prefect server, on 127.0.0.1.
#
#   infra/ui.sh start    start both, print their addresses, stop both on Ctrl-C
#   infra/ui.sh stop     stop both (from another shell)
#
# Ports: MLFLOW_PORT (default 5000) and PREFECT_PORT (default 4200); HOST (default 127.0.0.1).
# UI_ROOT: the folder of mlflow.db, mlartifacts/ and .ui/ (default: the project).
# While the servers run, .ui/mlflow_uri names the MLflow server, and every stage logs through
# it instead of opening mlflow.db beside it.
set -euo pipefail

PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${UI_ROOT:-$PROJECT}"
BIN="${BIN:-$PROJECT/.venv/bin}"
STATE="$ROOT/.ui"
HOST="${HOST:-127.0.0.1}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
STARTUP_SECONDS="${STARTUP_SECONDS:-180}"

in_use() {   # something listens on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_port() {   # $1 port, $2 the variable that moves it
    if in_use "$1"; then
        echo "make ui: port $1 is in use; free it or choose another: $2=<port> make ui" >&2
        exit 1
    fi
}

answers() {
    "$BIN/python" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

wait_until_up() {   # $1 name, $2 health URL, $3 pid, $4 log
    local deadline=$((SECONDS + STARTUP_SECONDS))
    until answers "$2"; do
        if ! kill -0 "$3" 2>/dev/null || ((SECONDS > deadline)); then
            echo "make ui: the $1 server did not come up; its log ($4):" >&2
            tail -n 30 "$4" >&2
            stop
            exit 1
        fi
        sleep 1
    done
}

stop_one() {   # $1 pid file
    [[ -f "$1" ]] || return 0
    local pid
    pid="$(cat "$1")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

stop() {
    stop_one "$STATE/mlflow.pid"
    stop_one "$STATE/prefect.pid"
    rm -f "$STATE/mlflow_uri" "$STATE/prefect_api_url"
    echo "make ui: stopped"
}

start() {
    mkdir -p "$STATE"
    check_port "$MLFLOW_PORT" MLFLOW_PORT
    check_port "$PREFECT_PORT" PREFECT_PORT
    # each in a session of its own (setsid), so that stop reaches its workers too
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$BIN/mlflow" server \
        --backend-store-uri "sqlite:///$ROOT/mlflow.db" --artifacts-destination "$ROOT/mlartifacts" \
        --host "$HOST" --port "$MLFLOW_PORT" --workers 1 >"$STATE/mlflow.log" 2>&1 &
    echo $! >"$STATE/mlflow.pid"
    # the UI's pages call the API at this address (Prefect's default is port 4200)
    PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}" PREFECT_SERVER_ANALYTICS_ENABLED=false \
        PREFECT_SERVER_UI_API_URL="http://127.0.0.1:$PREFECT_PORT/api" \
        setsid "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT" \
        >"$STATE/prefect.log" 2>&1 &
    echo $! >"$STATE/prefect.pid"
    trap 'stop; exit 0' INT TERM
    wait_until_up MLflow "http://127.0.0.1:$MLFLOW_PORT/health" "$(cat "$STATE/mlflow.pid")" \
        "$STATE/mlflow.log"
    wait_until_up Prefect "http://127.0.0.1:$PREFECT_PORT/api/health" \
        "$(cat "$STATE/prefect.pid")" "$STATE/prefect.log"
    echo "http://127.0.0.1:$MLFLOW_PORT" >"$STATE/mlflow_uri"
    echo "http://127.0.0.1:$PREFECT_PORT/api" >"$STATE/prefect_api_url"
    echo "MLflow:  http://127.0.0.1:$MLFLOW_PORT   (the runs of ./mlflow.db; training logs here now)"
    echo "Prefect: http://127.0.0.1:$PREFECT_PORT   (export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api)"
    echo "Ctrl-C (or make ui-stop) stops both."
    while kill -0 "$(cat "$STATE/mlflow.pid")" 2>/dev/null &&
          kill -0 "$(cat "$STATE/prefect.pid")" 2>/dev/null; do
        sleep 1
    done
    echo "make ui: a server stopped by itself; see $STATE/*.log" >&2
    stop
    exit 1
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: infra/ui.sh start|stop" >&2; exit 2 ;;
esac
