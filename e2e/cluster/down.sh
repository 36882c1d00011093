#!/usr/bin/env bash
# Stops the cluster that up.sh started, by recorded PIDs (never a recycled one), in an order
# that keeps anything from coming back, and removes what it leaves in the host: container
# tasks and their shims, mounts, network namespaces, iptables chains, the bridge. Keeps the
# caches (Kubernetes binaries, images) and the etcd data; `--purge` also removes the cluster's
# state directory (etcd data, certificates, containerd's content). Fine to run when nothing runs.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/cluster/lib.sh
. "$here/lib.sh"

stop() {
  local name=$1 pid
  pid=$(alive "$name") || { rm -f "$PIDS/$name"; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 50); do
    [ "$(start_time "$pid")" = "" ] && break
    sleep 0.1
  done
  [ -n "$(start_time "$pid")" ] && kill -KILL "$pid" 2>/dev/null
  rm -f "$PIDS/$name"
}

# Kills every container task and its shim: Debian's containerd 1.6 shims reparent to PID 1,
# write no pid file, and would keep the pause and function processes running.
kill_containers() {
  alive containerd >/dev/null || return 0
  local c="ctr --address $CONTAINERD_SOCK -n k8s.io"
  local tasks pids=()
  tasks=$($c tasks ls -q 2>/dev/null) || return 0
  for t in $tasks; do
    local pid
    pid=$($c tasks ls 2>/dev/null | awk -v t="$t" '$1 == t {print $2}')
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
      pids+=("$pid" "$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null)")
    fi
    $c tasks kill -s SIGKILL "$t" >/dev/null 2>&1
  done
  sleep 0.5
  for t in $tasks; do $c tasks delete -f "$t" >/dev/null 2>&1; done
  for pid in "${pids[@]}"; do
    [ -n "$pid" ] && [ "$pid" != 1 ] && kill -KILL "$pid" 2>/dev/null
  done
}

# First what would recreate pods, then the pods, then the rest.
for d in kube-controller-manager kube-scheduler kubelet; do stop "$d"; done
kill_containers
for d in kube-proxy kube-apiserver containerd etcd; do stop "$d"; done
# Shims of containers that had no task any more.
pkill -KILL -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $CONTAINERD_SOCK" 2>/dev/null

# Mounts under the node's directories and the pods' network namespaces.
grep -E " ($RUN|/run/netns/cni-|$(dirname "$CONTAINERD_SOCK"))" /proc/mounts | awk '{print $2}' |
  sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
for ns in /run/netns/cni-*; do
  [ -e "$ns" ] || continue
  umount -l "$ns" 2>/dev/null
  rm -f "$ns"
done
rm -rf /var/lib/cni/networks/skython

# The kubelet's and kube-proxy's iptables chains (kube-proxy --cleanup misses the kubelet's).
for table in filter nat mangle; do
  iptables -t "$table" -S 2>/dev/null | grep -E -- "-j (KUBE|CNI)-" | grep -E "^-A" |
    sed 's/^-A/-D/' | while read -r rule; do
      # eval: the rules quote their comments.
      eval "iptables -t $table $rule" 2>/dev/null
    done
  for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
    iptables -t "$table" -F "$chain" 2>/dev/null
  done
  for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
    iptables -t "$table" -X "$chain" 2>/dev/null
  done
done
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"

if [ "${1:-}" = "--purge" ]; then
  rm -rf "$STATE"
fi
echo "cluster stopped"
