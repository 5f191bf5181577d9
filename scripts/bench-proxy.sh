#!/usr/bin/env bash
# make bench-proxy: edgeproxy's TLS edge measured against nginx and Caddy
# (results in docs/PERFORMANCE.md, section "Edge: the TLS proxy against
# nginx and Caddy").
#
# Installs wrk, h2load (nghttp2-client), nginx and Caddy from the
# distribution's packages when they are missing (apt-get; needs root or sudo), builds bin/edgeproxy and
# bin/benchproxy, raises the open-files limit for the idle-connection test
# and runs benchproxy pinned to the load CPU. The proxy under test is pinned
# to the proxy CPU by benchproxy itself. Everything listens on 127.0.0.1.
#
# Arguments go to benchproxy (bin/benchproxy -h lists them), e.g.
#   scripts/bench-proxy.sh -duration 5s -repeats 1 -idle-conns 1000
#   scripts/bench-proxy.sh -peers upstream,edgeproxy,nginx,caddy,edgeproxy+GOGC=400
# LOAD_CPU and PROXY_CPU choose the two CPUs (default 0 and 1).
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
	sudo_cmd=(sudo)
fi

apt_install() {
	if ! command -v apt-get >/dev/null; then
		echo "bench-proxy: $* missing and no apt-get: install them yourself" >&2
		exit 1
	fi
	if [ -z "${apt_updated:-}" ]; then
		"${sudo_cmd[@]}" apt-get update -q
		apt_updated=1
	fi
	"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v caddy >/dev/null || missing+=(caddy)
command -v taskset >/dev/null || missing+=(util-linux)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
	apt_install "${missing[@]}"
fi
if ! command -v nginx >/dev/null; then
	# nginx-light is Debian 12's small build; later releases only have nginx.
	apt_install nginx-light || apt_install nginx
fi

case " $* " in
*edgeproxy-etcd*)
	# The edgeproxy-etcd peer runs .tools/bin/etcd, built at go.mod's version.
	GO="$GO" sh scripts/ensure-etcd.sh >/dev/null
	;;
esac

if [ "$(nproc --all)" -lt 2 ]; then
	echo "bench-proxy: needs two CPUs (one for the load and the upstream, one for the proxy)" >&2
	exit 1
fi

# 10,000 idle connections need as many descriptors in benchproxy and in the
# proxy; both inherit this limit (Go raises its soft limit to the hard one).
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

mkdir -p bin
"$GO" build -o bin/edgeproxy ./cmd/edgeproxy
"$GO" build -o bin/benchproxy ./cmd/benchproxy

echo "bench-proxy: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)'), load CPU $LOAD_CPU, proxy CPU $PROXY_CPU" >&2
exec taskset -c "$LOAD_CPU" bin/benchproxy -bin bin/edgeproxy -load-cpu "$LOAD_CPU" -proxy-cpu "$PROXY_CPU" "$@"
