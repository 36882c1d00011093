#!/usr/bin/env bash
# Brings up a real one-node Kubernetes (etcd, API server, controller-manager, scheduler, kubelet,
# kube-proxy, containerd, bridge CNI) on this machine from Debian's packages, and loads Skython's
# images (runner, skython, secantus; runner-full with SKYTHON_CLUSTER_FULL=1) built with
# $SKYTHON_BIN without a registry. Writes the admin kubeconfig to
# $CACHE/cluster/admin.kubeconfig. A second run reuses a healthy cluster; a broken one is
# stopped and started again. Facts behind each step: ../shared/notes/kubernetes-on-this-machine.md.
#
#   SKYTHON_BIN=target/debug/skython bash e2e/cluster/up.sh
#
# Stop it with e2e/cluster/down.sh. Caches (binaries, images) live in ${SKYTHON_CACHE:-~/.cache/skython}.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=e2e/cluster/lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || { echo "error: up.sh needs root (containerd, iptables, the bridge)" >&2; exit 1; }
if [ -z "${SKYTHON_BIN:-}" ] || [ ! -x "$SKYTHON_BIN" ]; then
  echo "error: set SKYTHON_BIN to the skython binary to put in the images" >&2
  exit 1
fi

PAUSE_IMAGE=docker.io/skython/pause:1
# Bump when os_image() changes, so every image is rebuilt on the new base.
RUNNER_BASE_RECIPE=2
# Bump when a component's flags change, so a running cluster of an older recipe is restarted.
CLUSTER_RECIPE=2
# The gateway's pods mount a fresh /proc in their sandboxes (bubblewrap), which a masked /proc
# forbids: they ask for `procMount: Unmasked`, behind this gate on Kubernetes 1.20.
FEATURE_GATES=ProcMountType=true

healthy() {
  for d in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    alive "$d" >/dev/null || return 1
  done
  kctl get --raw /readyz >/dev/null 2>&1 || return 1
  [ "$(cat "$STATE/recipe" 2>/dev/null)" = "$CLUSTER_RECIPE" ] || return 1
  [ "$(kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

setup_network() {
  step "network: bridge $BRIDGE ($NODE_IP), forwarding, CNI plugins"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge || fail "creating the bridge"
  fi
  ip addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/" || ip addr add "$NODE_IP/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  [ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null || true
  if [ -d /proc/sys/net/bridge ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  else
    echo "warning: no bridge netfilter here; Service IPs may not answer from pods" >&2
  fi
  # A probe of a pod IP before its veth is up leaves an incomplete ARP entry for up to 1 s.
  sysctl -qw "net.ipv4.neigh.$BRIDGE.retrans_time_ms=10" || true
  mkdir -p /opt/cni/bin "$STATE/cni"
  cp -u /usr/lib/cni/* /opt/cni/bin/
  cat >"$STATE/cni/10-skython.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "skython",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.88.1.1",
              "gateway": "$NODE_IP"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# X.509 v3 certificates (rustls refuses v1), all signed by one CA; made once per state dir.
sign() {
  local name=$1 subj=$2 ext=$3
  [ -f "$PKI/$name.crt" ] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%b\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null ||
    fail "signing $name"
}

make_pki() {
  [ -f "$PKI/done" ] && return 0
  step "certificates"
  rm -rf "$PKI" && mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=skython-e2e-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null || fail "making the CA"
  local client="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  local server="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth"
  sign apiserver "/CN=kube-apiserver" "$server\nsubjectAltName=IP:$NODE_IP,IP:$SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign kubelet-serving "/CN=$NODE_NAME" "$server\nsubjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
  sign admin "/O=system:masters/CN=admin" "$client"
  sign apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  sign controller-manager "/CN=system:kube-controller-manager" "$client"
  sign scheduler "/CN=system:kube-scheduler" "$client"
  sign proxy "/CN=system:kube-proxy" "$client"
  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  touch "$PKI/done"
}

kubeconfig() {
  local name=$1 cert=$2
  cat >"$STATE/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: skython-e2e
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: $name@skython-e2e
  context: {cluster: skython-e2e, user: $name}
current-context: $name@skython-e2e
EOF
  chmod 600 "$STATE/$name.kubeconfig"
}

start_control_plane() {
  step "etcd"
  mkdir -p "$STATE/etcd"
  daemon etcd etcd --name skython --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster skython=http://127.0.0.1:2380
  wait_for 60 "etcd health" "$LOGS/etcd.log" curl -fsS http://127.0.0.1:2379/health

  step "kube-apiserver"
  daemon kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 --insecure-port=0 \
    --service-cluster-ip-range="$SERVICE_CIDR" --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction --allow-privileged=true \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-signing-key-file="$PKI/sa.key" --service-account-key-file="$PKI/sa.pub" \
    --feature-gates="$FEATURE_GATES" --v=1
  wait_for 90 "the API server to be ready" "$LOGS/kube-apiserver.log" kctl get --raw /readyz

  step "controller-manager and scheduler"
  local cm=$STATE/controller-manager.kubeconfig sch=$STATE/scheduler.kubeconfig
  daemon kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$cm" \
    --authentication-kubeconfig="$cm" --authorization-kubeconfig="$cm" --leader-elect=false \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
    --use-service-account-credentials=true --bind-address=127.0.0.1 --v=1
  daemon kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$sch" \
    --authentication-kubeconfig="$sch" --authorization-kubeconfig="$sch" --leader-elect=false \
    --bind-address=127.0.0.1 --v=1
}

start_node() {
  step "containerd"
  mkdir -p "$RUN/containerd" "$(dirname "$CONTAINERD_SOCK")"
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$RUN/containerd"
state = "$(dirname "$CONTAINERD_SOCK")/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine denies a negative oom_score_adj; without this every pod sandbox fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "$STATE/cni"
EOF
  daemon containerd containerd --config "$STATE/containerd.toml"
  wait_for 30 "containerd to answer" "$LOGS/containerd.log" ctr --address "$CONTAINERD_SOCK" version

  load_images

  step "kubelet"
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$PKI/kubelet-serving.crt"
tlsPrivateKeyFile: "$PKI/kubelet-serving.key"
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
readOnlyPort: 0
featureGates: {ProcMountType: true}
clusterDomain: cluster.local
serializeImagePulls: false
# The images are imported, never pulled: keep them however full the disk gets.
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
  KUBELET_STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  daemon kubelet "$BIN/kubelet" --config="$STATE/kubelet.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" --container-runtime=remote \
    --container-runtime-endpoint="unix://$CONTAINERD_SOCK" --node-ip="$NODE_IP" \
    --hostname-override="$NODE_NAME" --root-dir="$RUN/kubelet" --v=1

  step "kube-proxy"
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: "$POD_CIDR"
hostnameOverride: "$NODE_NAME"
clientConnection: {kubeconfig: "$STATE/proxy.kubeconfig"}
# Leave the host's conntrack table size alone (a sysctl this machine may refuse).
conntrack: {maxPerCore: 0}
EOF
  daemon kube-proxy "$BIN/kube-proxy" --config="$STATE/kube-proxy.yaml" --v=1

  step "waiting for node $NODE_NAME to be Ready"
  # Over old etcd data the Node still says Ready from the last run: require a fresh heartbeat.
  wait_for 120 "the node to report Ready" "$LOGS/kubelet.log" node_ready_since "$KUBELET_STARTED"
}

node_ready_since() {
  kctl get node "$NODE_NAME" -o json 2>/dev/null | jq -e --arg t "$1" \
    '.status.conditions[] | select(.type == "Ready" and .status == "True" and .lastHeartbeatTime >= $t)'
}

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# The digest of an image in containerd, empty if absent.
image_digest() { ctr_k8s images ls -q "name==$1" 2>/dev/null | grep -q . &&
  ctr_k8s images ls "name==$1" | awk 'NR == 2 {print $3}'; }

# Tars an OCI layout's contents and imports its tags as docker.io/skython/NAME:TAG.
import_layout() {
  local layout=$1 base=$2
  tar -C "$layout" -cf "$layout.tar" . || fail "archiving $layout"
  ctr_k8s images import --base-name "$base" "$layout.tar" >"$LOGS/import.log" 2>&1 ||
    fail "importing $layout into containerd" "$LOGS/import.log"
  rm -f "$layout.tar"
}

# The digest umoci recorded for a tag of a layout.
layout_digest() {
  jq -r --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$1/index.json"
}

pause_image() {
  local layout=$IMAGES/pause
  if [ ! -f "$layout/index.json" ]; then
    step "building the pause image"
    rm -rf "$layout" "$IMAGES/pause-bundle"
    umoci init --layout "$layout"
    umoci new --image "$layout:1"
    umoci unpack --image "$layout:1" "$IMAGES/pause-bundle" >/dev/null
    install -m 0755 "$BIN/pause" "$IMAGES/pause-bundle/rootfs/pause"
    umoci repack --image "$layout:1" "$IMAGES/pause-bundle"
    umoci config --image "$layout:1" --config.entrypoint /pause --config.user 65535:65535
    umoci gc --layout "$layout"
    rm -rf "$IMAGES/pause-bundle"
  fi
  [ "$(image_digest "$PAUSE_IMAGE")" = "$(layout_digest "$layout" 1)" ] ||
    import_layout "$layout" docker.io/skython/pause
}

# The images, built from the same recipe as images/*/Dockerfile (see images/README.md) in one OCI
# layout, so that they share their layers (the Debian base, the runtime's virtualenv) on disk and
# in containerd. Each step's result is a tag NAME.KEY, KEY a hash of what went into it: a step
# runs only when its key changes, and it drops the older tags of its NAME. Steps set TAG.
LAYOUT=$IMAGES/oci
WORK=$IMAGES/work # scratch of a step: the unpacked bundle, wheels, an archive to import

# (grep reads the whole list: with -q it may stop early and fail the pipeline with SIGPIPE.)
tag_exists() { umoci ls --layout "$LAYOUT" | grep -x "$1" >/dev/null; }

drop_older() {
  local t
  for t in $(umoci ls --layout "$LAYOUT"); do
    if [ "${t%%.*}" = "${1%%.*}" ] && [ "$t" != "$1" ]; then umoci rm --image "$LAYOUT:$t"; fi
  done
  umoci gc --layout "$LAYOUT"
}

# Debian bookworm with python3 and python3-venv (what images/install-runtime.sh needs) and
# bubblewrap (the gateway confines draft test runs with it), as the Dockerfiles install them.
os_image() {
  TAG=os.$RUNNER_BASE_RECIPE
  tag_exists "$TAG" && return 0
  step "building the base image: debootstrap bookworm + python3 + bubblewrap (cold: a few minutes)"
  rm -rf "$WORK"
  umoci new --image "$LAYOUT:$TAG"
  umoci unpack --image "$LAYOUT:$TAG" "$WORK/bundle" >/dev/null
  local rootfs=$WORK/bundle/rootfs
  timeout 1200 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,bubblewrap \
    bookworm "$rootfs" http://deb.debian.org/debian >"$LOGS/debootstrap.log" 2>&1 ||
    fail "debootstrap" "$LOGS/debootstrap.log"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc \
    "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale
  umoci repack --image "$LAYOUT:$TAG" "$WORK/bundle"
  rm -rf "$WORK"
  drop_older "$TAG"
}

# NAME.KEY: the image BASE plus one layer, the virtualenv VENV that images/install-runtime.sh makes
# from REQUIREMENTS and checks by importing the MODULEs. Its wheels are fetched by the host's pip
# (its index and certificates) for the image's Python, then installed offline inside.
venv_image() { # NAME BASE REQUIREMENTS VENV MODULE...
  local name=$1 base=$2 req=$3 venv=$4
  shift 4
  TAG=$name.$(cat "$repo/images/install-runtime.sh" "$req" "$(dirname "$req")/requirements.txt" |
    (cat; echo "$base $venv $*") | sha256sum | cut -c1-12)
  tag_exists "$TAG" && return 0
  step "building the $name layer: $venv from ${req#"$repo"/} (cold: minutes)"
  rm -rf "$WORK"
  umoci unpack --image "$LAYOUT:$base" "$WORK/bundle" >/dev/null
  local rootfs=$WORK/bundle/rootfs python version abi
  mkdir "$rootfs/tmp/install"
  cp "$repo/images/install-runtime.sh" "$(dirname "$req")"/requirements*.txt "$rootfs/tmp/install/"
  python=$(chroot "$rootfs" python3 -c 'import platform, sys
print(platform.python_version(), "cp%d%d" % sys.version_info[:2])') || fail "running the image's python3"
  read -r version abi <<<"$python"
  timeout 1800 python3 -m pip download --quiet --dest "$rootfs/tmp/install/wheels" --only-binary=:all: \
    --python-version "$version" --implementation cp --abi "$abi" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -r "$req" >"$LOGS/wheels.log" 2>&1 || fail "downloading wheels" "$LOGS/wheels.log"
  timeout 1800 chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    sh /tmp/install/install-runtime.sh --venv "$venv" --wheels /tmp/install/wheels \
    "/tmp/install/$(basename "$req")" "$@" >"$LOGS/venv.log" 2>&1 ||
    fail "installing $venv into the image" "$LOGS/venv.log"
  rm -rf "$rootfs/tmp/install"
  umoci repack --image "$LAYOUT:$TAG" "$WORK/bundle"
  rm -rf "$WORK"
  drop_older "$TAG"
}

# This tree's binary (stripped), as a layer to add: BIN_LAYER, and BIN_SUM its checksum.
binary_layer() {
  local dir=$IMAGES/skython-layer
  rm -rf "$dir" && mkdir -p "$dir/usr/local/bin"
  strip -o "$dir/usr/local/bin/skython" "$SKYTHON_BIN" 2>/dev/null ||
    cp "$SKYTHON_BIN" "$dir/usr/local/bin/skython"
  BIN_SUM=$(sha256sum "$dir/usr/local/bin/skython" | cut -c1-16)
  BIN_LAYER=$dir.tar
  tar --owner=0 --group=0 -C "$dir" -cf "$BIN_LAYER" usr
  rm -rf "$dir"
}

# NAME.KEY: the image PARENT plus a layer with the binary (one for the images that share it).
binary_image() { # NAME PARENT
  local parent=$2
  TAG=$1.$(echo "$parent $BIN_SUM" | sha256sum | cut -c1-12)
  tag_exists "$TAG" && return 0
  step "adding the skython binary to $parent"
  umoci raw add-layer --image "$LAYOUT:$parent" --tag "$TAG" "$BIN_LAYER" ||
    fail "adding the binary layer"
  drop_older "$TAG"
}

# NAME.KEY: the image PARENT with an image config (umoci config flags), besides what every image
# has, as in the Dockerfiles: uid 10001 and C.UTF-8.
final_image() { # NAME PARENT FLAG...
  local parent=$2
  TAG=$1.$(echo "$*" | sha256sum | cut -c1-12)
  shift 2
  tag_exists "$TAG" && return 0
  umoci config --image "$LAYOUT:$parent" --tag "$TAG" --config.user 10001:10001 \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin --config.env LANG=C.UTF-8 "$@"
  drop_older "$TAG"
}

# Imports TAG into containerd as IMAGE:dev and IMAGE:dev-next, one image under two names (a test
# upgrades to a changed tag), unless both already name it. The archive holds just its blobs.
import_image() { # TAG IMAGE
  local digest
  digest=$(layout_digest "$LAYOUT" "$1")
  [ "$(image_digest "$2:dev")" = "$digest" ] && [ "$(image_digest "$2:dev-next")" = "$digest" ] &&
    return 0
  step "importing $2:dev and :dev-next into containerd"
  local out=$WORK/export d
  rm -rf "$out" && mkdir -p "$out/blobs/sha256"
  cp "$LAYOUT/oci-layout" "$out/"
  for d in "$digest" $(jq -r '.config.digest, .layers[].digest' "$LAYOUT/blobs/sha256/${digest#sha256:}"); do
    ln -f "$LAYOUT/blobs/sha256/${d#sha256:}" "$out/blobs/sha256/"
  done
  jq --arg t "$1" '.manifests |= [.[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)
    | (.annotations["org.opencontainers.image.ref.name"] = ("dev", "dev-next"))]' \
    "$LAYOUT/index.json" >"$out/index.json"
  tar -C "$out" -cf - . | ctr_k8s images import --base-name "$2" - >"$LOGS/import.log" 2>&1 ||
    fail "importing $2 into containerd" "$LOGS/import.log"
  rm -rf "$out"
}

load_images() {
  mkdir -p "$IMAGES"
  pause_image
  [ -f "$LAYOUT/index.json" ] || umoci init --layout "$LAYOUT"
  binary_layer
  local runner=(--config.env SKYTHON_PYTHON=/opt/skython/venv/bin/python
    --config.entrypoint /usr/local/bin/skython)
  os_image
  local os=$TAG
  venv_image runtime "$os" "$repo/runtime/requirements.txt" /opt/skython/venv \
    numpy pandas scipy requests bs4
  local runtime=$TAG
  binary_image runtime-bin "$runtime"
  local app=$TAG
  final_image runner "$app" "${runner[@]}" --config.workingdir / --config.cmd runner
  import_image "$TAG" docker.io/skython/runner
  # The same layers: the gateway and the operator (its default command is the gateway's).
  final_image skython "$app" "${runner[@]}" --config.workingdir /tmp \
    --config.cmd gateway --config.cmd --addr --config.cmd 0.0.0.0:8080
  import_image "$TAG" docker.io/skython/skython
  # The MongoDB-wire test server (no MongoDB image can be fetched here), storage in /data (an
  # emptyDir under a read-only root filesystem).
  venv_image secantus-venv "$os" "$repo/e2e/mongo/requirements.txt" /opt/secantus/venv secantus pymongo
  final_image secantus "$TAG" --config.workingdir /tmp \
    --config.entrypoint /opt/secantus/venv/bin/secantusd-py --config.cmd --host \
    --config.cmd 0.0.0.0 --config.cmd --port --config.cmd 27017 --config.cmd --storage-path \
    --config.cmd /data --config.exposedports 27017/tcp
  import_image "$TAG" docker.io/skython/secantus
  # The full runtime (tensorflow, keras) is 2+ GB: only when asked for.
  if [ "${SKYTHON_CLUSTER_FULL:-}" = 1 ]; then
    venv_image runtime-full "$os" "$repo/runtime/requirements-full.txt" /opt/skython/venv \
      numpy pandas scipy requests bs4 tensorflow keras
    binary_image runtime-full-bin "$TAG"
    final_image runner-full "$TAG" "${runner[@]}" --config.workingdir / --config.cmd runner
    import_image "$TAG" docker.io/skython/runner-full
  fi
  rm -rf "$WORK" "$BIN_LAYER"
}

main() {
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  bash "$here/build.sh"
  if healthy; then
    step "the cluster is already up; refreshing the images"
    load_images
  else
    if [ -n "$(ls -A "$PIDS" 2>/dev/null)" ]; then
      step "stopping what is left of a previous cluster"
      bash "$here/down.sh"
    fi
    setup_network
    make_pki
    kubeconfig admin admin
    kubeconfig controller-manager controller-manager
    kubeconfig scheduler scheduler
    kubeconfig proxy proxy
    kubeconfig kubelet kubelet
    start_control_plane
    start_node
    echo "$CLUSTER_RECIPE" >"$STATE/recipe"
  fi
  step "ready"
  kctl get nodes -o wide
  echo "kubeconfig: $KUBECONFIG_ADMIN"
}

# Sourcing defines the steps without running them (handy to rerun one step by hand).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
