#!/usr/bin/env bash
# `make server` / `make server-stop`: a local MLflow tracking server with a SQL backend store
# and artifacts proxied to S3. Without a configured S3 (no MLFLOW_S3_ENDPOINT_URL and no
# AWS_ACCESS_KEY_ID in the environment or in ENV_FILE) it starts a local S3-compatible
# endpoint (moto) for it. Only the server holds S3 credentials; clients need just the URL.
# Settings (from ready_for_mlflow/server.mk): BIN SERVER_STATE SERVER_PORT S3_PORT
# BACKEND_STORE_URI ARTIFACTS_DESTINATION ENV_FILE.
set -euo pipefail
action=${1:?usage: server.sh start|stop}
HOST=127.0.0.1

fail() { echo "make server: $*" >&2; exit 1; }
running() {  # pid: exists and is not a zombie waiting for init to reap it
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
alive() { [ -f "$1" ] && running "$(cat "$1")"; }
port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Start "$@" in its own session, so that stop can end it with all its workers.
launch() {
  local name=$1; shift
  setsid "$@" >"$SERVER_STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$SERVER_STATE/$name.pid"
}

wait_http() {  # url name seconds
  "$BIN/python" - "$@" "$SERVER_STATE" <<'PY' || exit 1
import pathlib, sys, time, urllib.error, urllib.request
url, name, seconds, state = sys.argv[1], sys.argv[2], float(sys.argv[3]), pathlib.Path(sys.argv[4])
pid = int((state / f"{name}.pid").read_text())
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        if not pathlib.Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.5)
log = (state / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
print(f"make server: {name} did not answer at {url} within {seconds:.0f} s; "
      f"log {state / name}.log: {' '.join(log)[:300]}", file=sys.stderr)
sys.exit(1)
PY
}

stop_all() {
  local pidfile pid stopped=0
  for pidfile in "$SERVER_STATE"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if running "$pid"; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 30); do running "$pid" || break; sleep 0.5; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "stopped $(basename "$pidfile" .pid) (pid $pid)"
      stopped=$((stopped + 1))
    fi
    rm -f "$pidfile"
  done
  [ "$stopped" -gt 0 ] || echo "nothing to stop: no running server recorded in $SERVER_STATE"
}

start() {
  [ -x "$BIN/mlflow" ] || fail "no $BIN/mlflow; run make setup"
  mkdir -p "$SERVER_STATE"
  if alive "$SERVER_STATE/mlflow.pid"; then
    fail "already running (pid $(cat "$SERVER_STATE/mlflow.pid")); make server-stop first"
  fi
  if [ -n "$ENV_FILE" ] && [ -f "$ENV_FILE" ]; then
    set -a; . "$ENV_FILE"; set +a
  fi
  local name
  for name in MLFLOW_S3_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION; do
    [ -n "${!name:-}" ] || unset "$name"  # an empty line in .env means "not set"
  done
  [[ $ARTIFACTS_DESTINATION == s3://?* ]] || \
    fail "ARTIFACTS_DESTINATION must be s3://bucket[/path], got '$ARTIFACTS_DESTINATION'"
  ! port_busy "$SERVER_PORT" || fail "port $SERVER_PORT on $HOST is in use; set SERVER_PORT=..."

  if [ -z "${MLFLOW_S3_ENDPOINT_URL:-}" ] && [ -z "${AWS_ACCESS_KEY_ID:-}" ]; then
    ! port_busy "$S3_PORT" || fail "port $S3_PORT on $HOST is in use; set S3_PORT=..."
    export MLFLOW_S3_ENDPOINT_URL="http://$HOST:$S3_PORT"
    # Placeholders for the local endpoint only; it accepts any key.
    export AWS_ACCESS_KEY_ID=local-access-key AWS_SECRET_ACCESS_KEY=local-secret-key
    export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
    launch s3 "$BIN/moto_server" -H "$HOST" -p "$S3_PORT"
    wait_http "$MLFLOW_S3_ENDPOINT_URL/moto-api/" s3 30 || { stop_all; exit 1; }
    local bucket=${ARTIFACTS_DESTINATION#s3://}; bucket=${bucket%%/*}
    "$BIN/python" -c 'import boto3, os, sys
boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"]).create_bucket(Bucket=sys.argv[1])' \
      "$bucket" || { stop_all; fail "could not create bucket $bucket on $MLFLOW_S3_ENDPOINT_URL"; }
    # The local endpoint keeps objects in memory: start the default store empty to match.
    rm -f "$SERVER_STATE/mlflow.db"
    echo "local S3 endpoint: $MLFLOW_S3_ENDPOINT_URL (in memory; objects go when it stops)"
  fi

  launch mlflow "$BIN/mlflow" server --host "$HOST" --port "$SERVER_PORT" \
    --backend-store-uri "$BACKEND_STORE_URI" --artifacts-destination "$ARTIFACTS_DESTINATION"
  wait_http "http://$HOST:$SERVER_PORT/health" mlflow 120 || { stop_all; exit 1; }
  echo "tracking server: http://$HOST:$SERVER_PORT (store $BACKEND_STORE_URI, artifacts $ARTIFACTS_DESTINATION)"
  echo "clients need no S3 key: export MLFLOW_TRACKING_URI=http://$HOST:$SERVER_PORT"
  echo "logs and pids in $SERVER_STATE; stop with: make server-stop"
}

case $action in
  start) start ;;
  stop)
    stop_all
    ;;
  *) fail "unknown action '$action': expected start or stop" ;;
esac
