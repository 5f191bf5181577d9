#!/bin/sh
# Runs every fuzz target of the module (every `func FuzzX` in a _test.go
# file) for FUZZTIME each (default 5s), one at a time: `go test -fuzz`
# takes one target and one package per run. Prints the inputs tried
# (execs) per target, and exits non-zero at the first failure, whose
# input go test saves under the package's testdata/fuzz/<Name>/.
#
#   FUZZTIME=5s sh scripts/fuzz-ci.sh      # make test (via make fuzz-ci)
#   FUZZTIME=10m sh scripts/fuzz-ci.sh     # make fuzz FUZZTIME=10m
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-5s}
log=$(mktemp)
summary=$(mktemp)
trap 'rm -f "$log" "$summary"' EXIT

targets=$(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' . |
	sed -E 's|^\./(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]+)$|\1 \2|' | sort -u)
if [ -z "$targets" ]; then
	echo "fuzz-ci: no fuzz targets found" >&2
	exit 1
fi

echo "$targets" | while read -r dir name; do
	if ! "$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "./$dir/" >"$log" 2>&1; then
		cat "$log"
		echo "fuzz-ci: $name (./$dir/) failed" >&2
		exit 1
	fi
	# The last progress line holds the total: "fuzz: elapsed: 5s, execs: 12345 (2469/sec), ..."
	execs=$(grep -Eo 'execs: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
	printf '%-24s %-22s %10s execs in %s\n' "$name" "./$dir/" "${execs:-?}" "$FUZZTIME" | tee -a "$summary"
done
echo "fuzz-ci: $(wc -l <"$summary") targets passed"
