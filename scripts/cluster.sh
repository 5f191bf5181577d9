#!/usr/bin/env bash
# cluster.sh: a local edgeproxy cluster on loopback, for trying the
# multi-node mode on one machine. `make cluster` runs `cluster.sh start`,
# `make cluster-stop` runs `cluster.sh stop`, `make cluster-clean` runs
# `cluster.sh clean`.
#
#   start   build bin/edgeproxy and .tools/bin/etcd, start a 3-member etcd
#           and 3 edgeproxy nodes on it, wait until each answers, print
#           where everything is; does nothing when the cluster is running
#   stop    stop the nodes (SIGTERM: they drain for up to 30 s), then etcd;
#           the data stays in .cluster, and the next start resumes on it
#   status  which processes of the cluster are running
#   clean   stop, then remove .cluster
#
# Everything lives under .cluster/ at the root of the repository: etcd's
# and the nodes' data directories, their logs (.cluster/log/) and pid
# files (.cluster/run/). All listeners are on 127.0.0.1:
#
#   etcd member eN      client 127.0.0.1:N2379 (2379, 22379, 32379), peer N2380
#   edgeproxy nodeN     API 127.0.0.1:810N, HTTP 127.0.0.1:820N, HTTPS 127.0.0.1:840N
#
# The nodes run with --dev (target CNAME base proxy.localhost, webhooks to
# private addresses allowed) and share --etcd-endpoints; whichever starts
# first on the empty prefix writes the bootstrap key into its data
# directory.
set -euo pipefail

root=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
GO=${GO:-go}
state="$root/.cluster"
run="$state/run"
logs="$state/log"
edgeproxy="$root/bin/edgeproxy"
etcd="$root/.tools/bin/etcd"
prefix=/edgeproxy/
members=(e0 e1 e2)
nodes=(node1 node2 node3)
# How long a start waits for one process to answer before giving up.
wait_seconds=60

etcd_client_port() { case $1 in e0) echo 2379 ;; e1) echo 22379 ;; e2) echo 32379 ;; esac; }
etcd_peer_port() { case $1 in e0) echo 2380 ;; e1) echo 22380 ;; e2) echo 32380 ;; esac; }
node_index() { echo "${1#node}"; }
api_addr() { echo "127.0.0.1:810$(node_index "$1")"; }
http_addr() { echo "127.0.0.1:820$(node_index "$1")"; }
https_addr() { echo "127.0.0.1:840$(node_index "$1")"; }

endpoints() {
	local m out=
	for m in "${members[@]}"; do
		out="${out:+$out,}127.0.0.1:$(etcd_client_port "$m")"
	done
	echo "$out"
}

initial_cluster() {
	local m out=
	for m in "${members[@]}"; do
		out="${out:+$out,}$m=http://127.0.0.1:$(etcd_peer_port "$m")"
	done
	echo "$out"
}

say() { echo "cluster: $*" >&2; }

# pid_of NAME prints the pid of the cluster's process NAME when it is
# running (its pid file names a live process running the binary it was
# started from), and fails otherwise.
pid_of() {
	local f="$run/$1.pid" pid exe
	[ -f "$f" ] || return 1
	pid=$(cat "$f")
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	# A pid file left by a process that died may name a pid reused since.
	exe=$(cat "$run/$1.exe" 2>/dev/null || true)
	if [ -n "$exe" ] && [ -r "/proc/$pid/cmdline" ]; then
		# The binary is argv[0], or argv[1] behind an interpreter.
		tr '\0' '\n' <"/proc/$pid/cmdline" | head -n 2 | grep -qxF "$exe" || return 1
	fi
	echo "$pid"
}

# spawn NAME BINARY ARGS... starts a process in the background with its
# output in .cluster/log/NAME.log and its pid in .cluster/run/NAME.pid.
spawn() {
	local name=$1 bin=$2
	shift 2
	nohup "$bin" "$@" >>"$logs/$name.log" 2>&1 </dev/null &
	echo $! >"$run/$name.pid"
	echo "$bin" >"$run/$name.exe"
}

# port_free ADDR fails when something listens on ADDR (host:port).
port_free() {
	local host=${1%:*} port=${1##*:}
	! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# wait_http NAME URL waits until URL answers 200, or until NAME's process
# has exited or wait_seconds have passed (then it shows NAME's log).
wait_http() {
	local name=$1 url=$2 i
	for ((i = 0; i < wait_seconds * 10; i++)); do
		if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
			return 0
		fi
		if ! pid_of "$name" >/dev/null; then
			say "$name exited while starting; the end of $logs/$name.log:"
			tail -n 30 "$logs/$name.log" >&2 || true
			return 1
		fi
		sleep 0.1
	done
	say "$name did not answer $url within ${wait_seconds}s; the end of $logs/$name.log:"
	tail -n 30 "$logs/$name.log" >&2 || true
	return 1
}

# stop_process NAME GRACE sends NAME SIGTERM, waits up to GRACE seconds
# for it to exit, then kills it.
stop_process() {
	local name=$1 grace=$2 pid i
	if pid=$(pid_of "$name"); then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < grace * 10; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			say "$name (pid $pid) still running after ${grace}s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		say "stopped $name (pid $pid)"
	fi
	rm -f "$run/$name.pid" "$run/$name.exe"
}

# stop_all GRACE NAME... stops the named processes at once. It waits for
# its own helpers by pid: a bare wait would also wait for the cluster's
# processes when this shell started them.
stop_all() {
	local grace=$1 name helpers=()
	shift
	for name in "$@"; do
		stop_process "$name" "$grace" &
		helpers+=($!)
	done
	wait "${helpers[@]}"
}

cmd_stop() {
	# The nodes first, so that none of them sees etcd go away. A node
	# drains for up to 30 s; an etcd member that leads may spend a few
	# seconds trying to hand its leadership over.
	stop_all 35 "${nodes[@]}"
	stop_all 20 "${members[@]}"
}

# abort stops whatever a failed start had started.
abort() {
	say "start failed; stopping what was started"
	cmd_stop
	exit 1
}

cmd_status() {
	local name pid any=
	for name in "${members[@]}" "${nodes[@]}"; do
		if pid=$(pid_of "$name"); then
			echo "$name running (pid $pid)"
			any=1
		else
			echo "$name stopped"
		fi
	done
	[ -n "$any" ]
}

print_summary() {
	local n key=
	echo
	echo "etcd:      --etcd-endpoints $(endpoints) --etcd-prefix $prefix"
	for n in "${nodes[@]}"; do
		echo "$n:     API http://$(api_addr "$n")  edge https://$(https_addr "$n")  HTTP http://$(http_addr "$n")  data .cluster/$n"
		if [ -z "$key" ] && [ -f "$state/$n/bootstrap-key" ]; then
			key=".cluster/$n/bootstrap-key"
		fi
	done
	echo "logs:      .cluster/log/   pids: .cluster/run/"
	echo
	if [ -n "$key" ]; then
		echo "The bootstrap key (scope *) is in $key:"
		echo "  export POSTHOG_PERSONAL_API_KEY=\$(cat $key)"
	else
		echo "No node's data directory holds a bootstrap key: the prefix $prefix was not empty when the"
		echo "cluster first started, so the key was written then (look in .cluster/node*/bootstrap-key)."
	fi
	echo "  curl -H \"Authorization: Bearer \$POSTHOG_PERSONAL_API_KEY\" http://$(api_addr node1)/api/organizations/@current/proxy_records/"
	echo "Admin commands take the node's data directory: bin/edgeproxy records list --data-dir .cluster/node2"
	echo "Stop everything with: make cluster-stop (data kept; make cluster-clean removes it)"
}

cmd_start() {
	local m n addr running=0 total=0
	for m in "${members[@]}" "${nodes[@]}"; do
		total=$((total + 1))
		if pid_of "$m" >/dev/null; then running=$((running + 1)); fi
	done
	if [ "$running" -eq "$total" ]; then
		say "already running"
		print_summary
		return 0
	fi
	if [ "$running" -gt 0 ]; then
		say "part of the cluster is running; stopping it before starting again"
		cmd_stop
	fi
	command -v curl >/dev/null 2>&1 || {
		say "curl is needed to wait for the processes to answer (make tools installs it)"
		exit 1
	}
	for m in "${members[@]}"; do
		for addr in "127.0.0.1:$(etcd_client_port "$m")" "127.0.0.1:$(etcd_peer_port "$m")"; do
			port_free "$addr" || { say "$addr is in use; etcd member $m needs it"; exit 1; }
		done
	done
	for n in "${nodes[@]}"; do
		for addr in "$(api_addr "$n")" "$(http_addr "$n")" "$(https_addr "$n")"; do
			port_free "$addr" || { say "$addr is in use; $n needs it"; exit 1; }
		done
	done

	say "building bin/edgeproxy"
	(cd "$root" && "$GO" build -o "$edgeproxy" ./cmd/edgeproxy)
	if ! "$edgeproxy" serve --help 2>&1 | grep -q -- '-etcd-endpoints'; then
		say "this build of edgeproxy has no --etcd-endpoints flag: it cannot run on etcd"
		exit 1
	fi
	say "making sure .tools/bin/etcd is built"
	GO=$GO sh "$root/scripts/ensure-etcd.sh" >/dev/null

	mkdir -p "$run" "$logs"

	for m in "${members[@]}"; do
		say "starting etcd member $m on 127.0.0.1:$(etcd_client_port "$m")"
		spawn "$m" "$etcd" \
			--name "$m" \
			--data-dir "$state/etcd/$m" \
			--listen-peer-urls "http://127.0.0.1:$(etcd_peer_port "$m")" \
			--initial-advertise-peer-urls "http://127.0.0.1:$(etcd_peer_port "$m")" \
			--listen-client-urls "http://127.0.0.1:$(etcd_client_port "$m")" \
			--advertise-client-urls "http://127.0.0.1:$(etcd_client_port "$m")" \
			--initial-cluster "$(initial_cluster)" \
			--initial-cluster-token edgeproxy-local-cluster \
			--initial-cluster-state new \
			--auto-compaction-mode periodic \
			--auto-compaction-retention 1h
	done
	for m in "${members[@]}"; do
		wait_http "$m" "http://127.0.0.1:$(etcd_client_port "$m")/health" || abort
	done
	say "etcd is healthy"

	for n in "${nodes[@]}"; do
		mkdir -p "$state/$n"
		say "starting $n (API $(api_addr "$n"))"
		spawn "$n" "$edgeproxy" serve --dev \
			--node-name "$n" \
			--data-dir "$state/$n" \
			--api-addr "$(api_addr "$n")" \
			--http-addr "$(http_addr "$n")" \
			--https-addr "$(https_addr "$n")" \
			--etcd-endpoints "$(endpoints)" \
			--etcd-prefix "$prefix"
		# One at a time: the first node on an empty prefix bootstraps it,
		# and its key is then in a data directory the summary can name.
		wait_http "$n" "http://$(api_addr "$n")/readyz" || abort
	done
	say "every node is ready"
	print_summary
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
clean)
	cmd_stop
	rm -rf "$state"
	say "removed .cluster"
	;;
*)
	echo "usage: $0 start|stop|status|clean" >&2
	exit 2
	;;
esac
