#!/usr/bin/env bash
# Starts or stops the MongoDB-wire server the tests use (SecantusDB's secantusd-py, installed by
# `make venv-mongo`), in the background on 127.0.0.1, with fresh storage on every start.
# Usage: scripts/mongo.sh start|stop
# Environment: VENV_MONGO (default ~/.cache/skython/venv-mongo), MONGO_PORT (default 27099),
# MONGO_DIR (default ~/.cache/skython/mongo: storage, log and pid file), MONGO_WAIT (seconds to
# wait for the first answer, default 30).
set -euo pipefail
cache=${CACHE:-$HOME/.cache/skython}
venv=${VENV_MONGO:-$cache/venv-mongo}
port=${MONGO_PORT:-27099}
dir=${MONGO_DIR:-$cache/mongo}
wait_s=${MONGO_WAIT:-30}
pidfile=$dir/secantusd.pid
log=$dir/secantusd.log

# True when a MongoDB server answers a ping on the port.
answers() {
  "$venv/bin/python" - "$port" <<'EOF' >/dev/null 2>&1
import sys
from pymongo import MongoClient
MongoClient(f"mongodb://127.0.0.1:{sys.argv[1]}/?directConnection=true",
            serverSelectionTimeoutMS=500).admin.command("ping")
EOF
}

running_pid() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid"
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    echo "==> MongoDB test server on port $port stopped"
  fi
  rm -f "$pidfile"
}

start() {
  if [ ! -x "$venv/bin/secantusd-py" ]; then
    echo "no secantusd-py in $venv: run 'make venv-mongo' first" >&2
    exit 1
  fi
  stop
  if answers; then
    echo "port $port already has a MongoDB server that this script did not start;" \
      "stop it or pick another port with MONGO_PORT" >&2
    exit 1
  fi
  rm -rf "$dir/data"
  mkdir -p "$dir/data"
  # setsid: the server outlives this script and is not hit by the caller's Ctrl-C twice.
  setsid "$venv/bin/secantusd-py" --host 127.0.0.1 --port "$port" \
    --storage-path "$dir/data" --log-level WARNING >"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + wait_s))
  until answers; do
    if ! running_pid >/dev/null; then
      echo "the MongoDB test server exited while starting; its log ($log):" >&2
      tail -n 30 "$log" >&2
      rm -f "$pidfile"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "the MongoDB test server did not answer on port $port within ${wait_s}s; its log ($log):" >&2
      tail -n 30 "$log" >&2
      stop
      exit 1
    fi
    sleep 0.2
  done
  echo "==> MongoDB test server: mongodb://127.0.0.1:$port/?directConnection=true (log: $log)"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
