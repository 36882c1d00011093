#!/usr/bin/env bash
# Installs the packages a one-node cluster needs and builds Kubernetes from Debian's source
# package into $CACHE/k8s/bin (once per machine; a rebuild happens only when the version changes).
# Called by up.sh; safe to run on its own.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/cluster/lib.sh
. "$here/lib.sh"

PACKAGES=(golang-go rsync jq gcc libc6-dev golang-github-modern-go-reflect2-dev etcd-server
  containerd runc containernetworking-plugins umoci iptables conntrack openssl busybox-static
  debootstrap iproute2 procps kmod)
K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing ${missing[*]}"
  # Package scripts must not start the Debian services: up.sh runs its own daemons.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  timeout 300 apt-get update -qq >/dev/null || fail "apt-get update"
  timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$CACHE/apt.log" 2>&1 ||
    fail "apt-get install" "$CACHE/apt.log"
  # Debian's packages may have started daemons anyway (no systemd here, but be sure).
  pkill -x etcd 2>/dev/null || true
  pkill -x containerd 2>/dev/null || true
}

# The source version of Debian's kubernetes package, e.g. 1.20.5+really1.20.2-1.1+deb12u1.
k8s_version() {
  apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}

enable_deb_src() {
  local f=/etc/apt/sources.list.d/skython-src.sources
  [ -f "$f" ] && return 0
  # The same bookworm suites as the machine's binary packages.
  cat >"$f" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  timeout 300 apt-get update -qq >/dev/null || fail "apt-get update (deb-src)"
}

build_kubernetes() {
  mkdir -p "$K8S" "$BIN"
  local have=""
  [ -f "$BIN/VERSION" ] && have=$(cat "$BIN/VERSION")
  local ok=1
  for c in "${K8S_COMPONENTS[@]}" pause; do [ -x "$BIN/$c" ] || ok=0; done
  if [ $ok = 1 ] && [ -n "$have" ]; then
    return 0
  fi
  step "fetching Debian's kubernetes source package"
  enable_deb_src
  local version
  version=$(k8s_version)
  [ -n "$version" ] || fail "no kubernetes source package found (deb-src)"
  rm -rf "$K8S/dl" "$K8S/src"
  mkdir -p "$K8S/dl"
  (cd "$K8S/dl" && timeout 600 apt-get source --download-only -qq kubernetes >"$K8S/dl/apt-source.log" 2>&1) ||
    fail "apt-get source kubernetes" "$K8S/dl/apt-source.log"
  local orig
  orig=$(find "$K8S/dl" -maxdepth 1 -name "kubernetes_*.orig.tar.*" | head -n1)
  [ -n "$orig" ] || fail "the source package has no orig tarball"
  mkdir -p "$K8S/src"
  tar -xf "$orig" -C "$K8S/src" --strip-components=1 || fail "unpacking $orig"
  local src=$K8S/src
  # The vendored reflect2 v1.0.1 makes the API server crash (SIGSEGV in mapiterinit) on Go 1.19
  # the first time it stores a custom resource: swap in Debian's v1.0.2 as a whole directory.
  rsync -a --delete --exclude go.mod /usr/share/gocode/src/github.com/modern-go/reflect2/ \
    "$src/vendor/github.com/modern-go/reflect2/" || fail "replacing vendored reflect2"
  mkdir -p "$src/.go/src/k8s.io"
  ln -sfn "$src" "$src/.go/src/k8s.io/kubernetes"
  step "building kubernetes ${K8S_COMPONENTS[*]} (cold: about 5 minutes on 2 cores)"
  (
    cd "$src/.go/src/k8s.io/kubernetes"
    export GOPATH=$src/.go GOCACHE=$K8S/gocache CGO_ENABLED=0
    timeout 2400 make WHAT="$(printf 'cmd/%s ' "${K8S_COMPONENTS[@]}")" >"$K8S/build.log" 2>&1
  ) || fail "building kubernetes" "$K8S/build.log"
  for c in "${K8S_COMPONENTS[@]}"; do
    install -m 0755 "$src/_output/bin/$c" "$BIN/$c" || fail "no $c after the build" "$K8S/build.log"
  done
  gcc -Os -static -o "$BIN/pause" "$src/build/pause/linux/pause.c" || fail "building pause"
  echo "$version" >"$BIN/VERSION"
  # The source tree is 1 GB; the binaries and the Go cache are what a rebuild reuses.
  rm -rf "$K8S/src" "$K8S/dl"
}

mkdir -p "$CACHE"
install_packages
build_kubernetes
