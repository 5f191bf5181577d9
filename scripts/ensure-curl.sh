#!/bin/sh
# ensure-curl.sh: make sure curl is on PATH, for the tests that run it
# (control: the documented curl examples; cmd/edgeproxy: a client of the
# admin socket as another user). `make tools` runs it, and `make test`
# runs `make tools` first.
#
# When curl is missing it installs Debian's `curl` package without
# recommends, non-interactively, as root.
set -eu

if command -v curl >/dev/null 2>&1; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-curl: curl is missing; run as root (or: sudo apt-get install curl)" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "ensure-curl: curl is missing and apt-get is not available; install curl by hand" >&2
	exit 1
fi

echo "ensure-curl: installing Debian's curl package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends curl

command -v curl >/dev/null 2>&1 || {
	echo "ensure-curl: curl still not on PATH after the install" >&2
	exit 1
}
