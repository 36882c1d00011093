#!/bin/sh
# The Python runtime of Skython's images: one recipe for the registry images (the Dockerfiles RUN
# it) and for the test cluster's (e2e/cluster/up.sh runs it in a debootstrap chroot), so both get
# the same virtualenv on the same Debian bookworm python3.
#
#   install-runtime.sh [--venv DIR] [--wheels DIR] REQUIREMENTS MODULE...
#
# Run as root inside a Debian bookworm root filesystem that has python3 and python3-venv. Creates
# the virtualenv DIR (default /opt/skython/venv) from REQUIREMENTS, offline from the wheels in
# --wheels DIR when given, else from the package index; checks that every MODULE imports; creates
# the user the images run as (uid and gid 10001, home /tmp: the one writable place under a
# read-only root filesystem); removes caches and documentation.
set -eu

venv=/opt/skython/venv
wheels=
while [ $# -gt 0 ]; do
  case $1 in
    --venv) venv=$2 && shift 2 ;;
    --wheels) wheels=$2 && shift 2 ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "usage: $0 [--venv DIR] [--wheels DIR] REQUIREMENTS MODULE..." >&2
  exit 2
fi
requirements=$1
shift

python3 -m venv "$venv"
if [ -n "$wheels" ]; then
  "$venv/bin/pip" install --no-cache-dir --disable-pip-version-check --no-index \
    --find-links "$wheels" -r "$requirements"
else
  "$venv/bin/pip" install --no-cache-dir --disable-pip-version-check -r "$requirements"
fi
"$venv/bin/python" -c 'import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]' "$@"

# Numeric ids, so that runAsNonRoot can check them; the same for every image.
getent group 10001 >/dev/null || groupadd --gid 10001 skython
getent passwd 10001 >/dev/null ||
  useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin skython

rm -rf /root/.cache /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc /usr/share/man \
  /usr/share/info /usr/share/locale
