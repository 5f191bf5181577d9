#!/bin/sh
# ensure-prometheus.sh: make sure promtool and prometheus are on PATH, for
# the tests in ./deploy (rules, metrics format, a real Prometheus scraping
# edgeproxy). `make tools` runs it, and `make test` runs `make tools` first.
#
# When promtool is missing it installs Debian's `prometheus` package
# (which ships both binaries) without recommends, non-interactively, as
# root. The package's own service is never left running or enabled: the
# tests start their own Prometheus on a free loopback port.
set -eu

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-prometheus: promtool is missing; run as root (or: sudo apt-get install prometheus)" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "ensure-prometheus: promtool is missing and apt-get is not available; install Prometheus 2.x (prometheus and promtool) by hand" >&2
	exit 1
fi

# Keep maintainer scripts from starting the service during the install:
# policy-rc.d exit 101 means "action forbidden" to invoke-rc.d and
# deb-systemd-invoke. An existing policy (as in containers) is left alone.
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	own_policy=1
fi
cleanup() {
	if [ -n "$own_policy" ]; then
		rm -f "$policy"
	fi
}
trap cleanup EXIT INT TERM

echo "ensure-prometheus: installing Debian's prometheus package (promtool, prometheus)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends prometheus

# The package enables its unit for the next boot; a test machine does not
# want a Prometheus of its own running.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
	/etc/init.d/prometheus stop >/dev/null 2>&1 || true
	if command -v update-rc.d >/dev/null 2>&1; then
		update-rc.d prometheus disable >/dev/null 2>&1 || true
	fi
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
	fi
fi

command -v promtool >/dev/null 2>&1 || {
	echo "ensure-prometheus: promtool still not on PATH after the install" >&2
	exit 1
}
promtool --version 2>&1 | head -n 1 >&2
