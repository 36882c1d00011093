# Shared by up.sh, build.sh, images.sh and down.sh: paths, progress and failure reporting, and
# PID records that survive PID reuse. Facts behind the choices: the note "A real one-node
# Kubernetes on these machines" (kubernetes-on-this-machine.md).
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file

CACHE=${SKYTHON_CACHE:-$HOME/.cache/skython}
K8S=$CACHE/k8s                 # Go build cache and built binaries (kept across clusters)
BIN=$K8S/bin                   # kube-* and pause, with VERSION = the Debian source version
IMAGES=$CACHE/images           # OCI layouts of the images, the runner's cached base, wheels (kept)
STATE=$CACHE/cluster           # the cluster: pki, configs, logs, pids, etcd data, node state
PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
RUN=$STATE/run                 # containerd's root (its image store) and the kubelet's root dir
KUBECONFIG_ADMIN=$STATE/admin.kubeconfig

# The bridge that carries the pod network; the API server and the kubelet listen on its address
# so that pods reach them.
BRIDGE=cni0
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/12
SERVICE_IP=10.96.0.1
CNI_NETWORK=skython
NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')
# A containerd of our own, apart from any system one (whose socket is /run/containerd).
CONTAINERD_SOCK=/run/skython-containerd/containerd.sock
CONTAINERD_STATE=/run/skython-containerd/state

RUNNER_IMAGE=docker.io/skython/runner:dev
PAUSE_IMAGE=docker.io/skython/pause:1
BUSYBOX_IMAGE=docker.io/skython/busybox:dev

# ---- progress and failures ------------------------------------------------------------------

T0=${T0:-$(date +%s)}
STEPS=${STEPS:-9}
STEP="start"
STEP_STARTED=$T0
TIMINGS=""

elapsed() { echo $(($(date +%s) - T0)); }

# step N TEXT: one progress line per step, with the seconds since the script started; the time
# each step took is collected in TIMINGS for the summary at the end.
step() {
  local now
  now=$(date +%s)
  [ "$STEP" = start ] || TIMINGS="$TIMINGS ${STEP%% *}:$((now - STEP_STARTED))s"
  STEP="[$1/$STEPS] $2"
  STEP_STARTED=$now
  echo "==> [$1/$STEPS] $2  (+$(elapsed)s)"
}

# A line of detail inside a step.
note() { echo "    $*  (+$(elapsed)s)"; }

# fail WHY [LOG]: says which step failed and why, shows the end of the log that explains it,
# and exits non-zero.
fail() {
  trap - ERR
  echo "error: step $STEP failed: $1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    echo "---- last 30 lines of $2:" >&2
    tail -n 30 "$2" | sed 's/^/    /' >&2
  fi
  exit 1
}

# Whatever fails without a fail() of its own still names the step and the command.
on_err() { fail "command failed (exit $1): $2"; }

# wait_for TIMEOUT WHAT DAEMON CMD...: polls CMD (which must bound its own time) until it
# succeeds; fails after TIMEOUT seconds, or at once when DAEMON (if not empty) has exited, with
# the end of that daemon's log.
wait_for() {
  local timeout=$1 what=$2 daemon=$3
  shift 3
  local end=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$daemon" ] && ! alive "$daemon" >/dev/null; then
      fail "$daemon exited while waiting for $what" "$LOGS/$daemon.log"
    fi
    if [ "$(date +%s)" -ge "$end" ]; then
      fail "$what: not within ${timeout}s" "${daemon:+$LOGS/$daemon.log}"
    fi
    sleep 0.5
  done
}

# ---- daemons and their PID records ------------------------------------------------------------

# The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat); empty when
# there is no such process. A PID is only ever trusted together with its start time.
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # The command name (field 2) may contain spaces: count from after its closing parenthesis.
  stat=${stat##*) }
  echo "$stat" | awk '{print $20}'
}

# daemon NAME CMD...: starts CMD in a session of its own with its output in logs/NAME.log, and
# records its PID with its start time in pids/NAME.
daemon() {
  local name=$1
  shift
  mkdir -p "$LOGS" "$PIDS"
  echo "---- $(date -u +%FT%TZ) up.sh starts: $*" >>"$LOGS/$name.log"
  (
    # Hand the daemon none of the caller's other descriptors: a `make ... | tee` or a CI step
    # holding a pipe would otherwise wait for the daemon to exit.
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    # Not a process group leader (no job control in scripts), so setsid execs in this very process.
    exec setsid "$@"
  ) >>"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid $(start_time "$pid")" >"$PIDS/$name"
}

# alive NAME: prints the recorded PID of a daemon if that very process (same start time) runs.
alive() {
  local f=$PIDS/$1 pid st
  [ -f "$f" ] || return 1
  read -r pid st <"$f" || return 1
  [ -n "$pid" ] && [ -n "$st" ] && [ "$(start_time "$pid")" = "$st" ] && echo "$pid"
}

kctl() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout=10s "$@"; }
ctr_k8s() { timeout 300 ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }
