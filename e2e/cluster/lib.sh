# Shared by up.sh and down.sh: paths, logging, and PID records that survive PID reuse.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file

CACHE=${SKYTHON_CACHE:-$HOME/.cache/skython}
K8S=$CACHE/k8s                 # source, Go caches and built binaries (kept across clusters)
BIN=$K8S/bin
IMAGES=$CACHE/images           # runner base rootfs, wheels, OCI layouts (kept)
STATE=$CACHE/cluster           # the running cluster: pki, configs, data, logs, pids
PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
RUN=$STATE/run                 # kubelet and containerd state
KUBECONFIG_ADMIN=$STATE/admin.kubeconfig

# The bridge that carries the pod network; the API server and kubelet listen on its address so
# that pods reach them.
BRIDGE=cni0
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/12
SERVICE_IP=10.96.0.1
NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')
CONTAINERD_SOCK=/run/skython-containerd/containerd.sock

T0=$(date +%s)
STEP=""

step() {
  STEP=$1
  echo "==> [$(($(date +%s) - T0))s] $1"
}

# Fails the current step, saying which and why; shows the tail of a log when one is named.
fail() {
  echo "error: step '$STEP' failed: $1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    echo "--- last lines of $2:" >&2
    tail -n 30 "$2" >&2
  fi
  exit 1
}

# Polls a command until it succeeds or the timeout (seconds) passes.
wait_for() {
  local timeout=$1 what=$2 log=${3:-}
  shift 3
  local end=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then
      fail "$what did not happen within ${timeout}s" "$log"
    fi
    sleep 0.5
  done
}

start_time() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# Starts a daemon in the background with its log, and records its PID with its start time.
daemon() {
  local name=$1
  shift
  mkdir -p "$LOGS" "$PIDS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid $(start_time "$pid")" >"$PIDS/$name"
}

# The recorded PID of a daemon if that very process still runs.
alive() {
  local f=$PIDS/$1 pid st
  [ -f "$f" ] || return 1
  read -r pid st <"$f"
  [ -n "$pid" ] && [ "$(start_time "$pid")" = "$st" ] && echo "$pid"
}

kctl() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
