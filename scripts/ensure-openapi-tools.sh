#!/bin/sh
# ensure-openapi-tools.sh: install what docs/openapi_test.go's
# TestOpenAPIAjvStrict runs: Node.js and, in scripts/openapi-check, the
# npm packages pinned by its package-lock.json (Ajv, ajv-formats,
# @seriousme/openapi-schema-validator, yaml). `make tools` runs it, and
# `make test` runs `make tools` first.
#
# When node or npm is missing it installs Debian's nodejs and npm packages
# (as root, with apt-get). The npm packages go to
# scripts/openapi-check/node_modules (ignored by git) with `npm ci`, which
# installs exactly the locked versions; they are installed again only when
# the lock file changes.
set -eu

dir=$(cd "$(dirname "$0")/openapi-check" && pwd)

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "ensure-openapi-tools: node or npm is missing; run as root (or: sudo apt-get install nodejs npm)" >&2
		exit 1
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "ensure-openapi-tools: node or npm is missing and apt-get is not available; install Node.js 18 or later with npm by hand" >&2
		exit 1
	fi
	echo "ensure-openapi-tools: installing Debian's nodejs and npm packages" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y --no-install-recommends nodejs npm
fi

stamp="$dir/node_modules/.edgeproxy-installed-lock"
if [ -f "$stamp" ] && cmp -s "$stamp" "$dir/package-lock.json"; then
	exit 0
fi
echo "ensure-openapi-tools: npm ci in $dir" >&2
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
cp "$dir/package-lock.json" "$stamp"
node --version >&2
