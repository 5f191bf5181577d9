#!/bin/sh
# ensure-etcd.sh: make sure ./.tools/bin/etcd is the etcd server at the
# version go.mod requires, for the tests that run etcd as separate
# processes (to kill members with kill -9) and for `make cluster`.
# `make tools` runs it, and `make test` runs `make tools` first.
#
# go.mod names the etcd server as a tool (`tool go.etcd.io/etcd/server/v3`),
# so the binary is built by the Go toolchain from the module cache with the
# versions and checksums go.mod and go.sum pin: no download other than Go
# modules, no root. When the binary is there and reports that version, it
# does nothing.
#
# Prints the binary's path on stdout; everything else goes to stderr.
set -eu

GO=${GO:-go}
root=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
bin="$root/.tools/bin/etcd"
pkg=go.etcd.io/etcd/server/v3

cd "$root"
want=$("$GO" list -m -f '{{.Version}}' "$pkg")
# `etcd --version` prints "etcd Version: 3.7.3"; go.mod says v3.7.3.
want=${want#v}

if [ -x "$bin" ]; then
	have=$("$bin" --version 2>/dev/null | sed -n 's/^etcd Version: //p')
	if [ "$have" = "$want" ]; then
		echo "$bin"
		exit 0
	fi
	echo "ensure-etcd: $bin is version '${have:-unknown}', go.mod wants $want; rebuilding" >&2
fi

echo "ensure-etcd: building etcd $want into $bin" >&2
mkdir -p "$root/.tools/bin"
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT INT TERM
"$GO" build -o "$tmp" "$pkg"
have=$("$tmp" --version 2>/dev/null | sed -n 's/^etcd Version: //p')
if [ "$have" != "$want" ]; then
	echo "ensure-etcd: the built binary reports version '$have', not $want" >&2
	exit 1
fi
mv "$tmp" "$bin"
echo "$bin"
