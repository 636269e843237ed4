#!/usr/bin/env bash
# Start a multi-node Ray cluster on this machine: one head node and N worker nodes, each its own
# raylet with its own CPUs, custom resource and temp dir; dashboard and job server on 127.0.0.1,
# token authentication on. Stop it with down.sh.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: cluster/local/up.sh [--workers N] [--cpus-per-node C] [--head-cpus H] [--port P]
                           [--dashboard-port D] [--object-store-mb M] [--state-dir DIR]

Start a Ray cluster on this machine: a head node plus N worker nodes (separate raylets), with
the dashboard / job server on 127.0.0.1 and token authentication on (Ray's GCS and raylet ports
listen on all interfaces whatever one does in Ray 2.60; the token guards them, see cluster/README.md).
Prints the dashboard / job server address
and the lines to export; records what it started in DIR/state.env so that down.sh stops exactly
those processes and no other Ray on the machine. Running it again while the cluster is up only
prints the addresses.

options:
  --workers N          worker nodes besides the head (default: 1)
  --cpus-per-node C    logical CPUs of each worker node (default: 2)
  --head-cpus H        logical CPUs of the head node; 0 keeps training off the head, like a
                       production head that only runs job drivers (default: 0)
  --port P             GCS port of the head (default: 6379, or a free port if 6379 is taken)
  --dashboard-port D   dashboard + job server port (default: 8265, or a free port if taken)
  --object-store-mb M  object store size of each node in MiB (default: 512)
  --state-dir DIR      where state.env, env.sh, the auth token and start logs go
                       (default: cluster/local/.state; git- and Ray-upload-ignored)
  -h, --help           show this help

Ports it opens (Ray 2.60; "all" = every interface of this machine):
  GCS (--port, 6379)                        all      token-guarded
  dashboard + job server (--dashboard-port) 127.0.0.1 only
  Ray client server, one dashboard agent    all      free ports picked here (the defaults 10001 and
    HTTP port per node                               52365 would collide between nodes)
  raylet, object manager, node manager,     all      random ports, token-guarded
    runtime-env agent, every worker's gRPC
  Prometheus metrics: autoscaler 44217,     all      read-only metrics, no token
    dashboard 44227, one random per node
Restrict them with a firewall (e.g. nftables/iptables: accept these ports only from 127.0.0.0/8
or your cluster's subnet) or run the cluster in a private network namespace / VM. A single-node
`ptycho-dist train` without --address / RAY_ADDRESS starts its own Ray with every port on
127.0.0.1 only (a multi-node cluster cannot: Ray refuses worker nodes on a loopback-only head).

Each node i gets the custom resource {"local_node_<i>": 1} (head: i = 0), so work can be
pinned to a node (e.g. resources={"local_node_1": 0.01}). Ray processes run with this repository's venv
on PATH (the "image" of these nodes), so job entrypoints like `ptycho-dist train` resolve.
The `ray` used is $RAY, else .venv/bin/ray, else ray on PATH.

environment after start (also written to DIR/env.sh):
  RAY_ADDRESS             GCS address, for ray.init / `ptycho-dist ... --address auto` on this machine
  RAY_API_SERVER_ADDRESS  http://127.0.0.1:D, for `ray job submit|logs|status|stop|list`
  RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=DIR/auth_token  (the token of this cluster only)
EOF
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

WORKERS=1 CPUS_PER_NODE=2 HEAD_CPUS=0 PORT="" DASHBOARD_PORT="" OBJECT_STORE_MB=512
STATE_DIR="$HERE/.state"
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --workers|--cpus-per-node|--head-cpus|--port|--dashboard-port|--object-store-mb|--state-dir)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      case "$1" in
        --workers) WORKERS=$2 ;;
        --cpus-per-node) CPUS_PER_NODE=$2 ;;
        --head-cpus) HEAD_CPUS=$2 ;;
        --port) PORT=$2 ;;
        --dashboard-port) DASHBOARD_PORT=$2 ;;
        --object-store-mb) OBJECT_STORE_MB=$2 ;;
        --state-dir) STATE_DIR=$2 ;;
      esac
      shift 2 ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
is_int "$WORKERS" || die "--workers must be a whole number >= 0, got '$WORKERS'"
is_int "$CPUS_PER_NODE" && [ "$CPUS_PER_NODE" -ge 1 ] || die "--cpus-per-node must be >= 1, got '$CPUS_PER_NODE'"
is_int "$HEAD_CPUS" || die "--head-cpus must be a whole number >= 0, got '$HEAD_CPUS'"
is_int "$OBJECT_STORE_MB" && [ "$OBJECT_STORE_MB" -ge 80 ] || die "--object-store-mb must be >= 80 (Ray's minimum), got '$OBJECT_STORE_MB'"
[ -z "$PORT" ] || is_int "$PORT" || die "--port must be a port number, got '$PORT'"
[ -z "$DASHBOARD_PORT" ] || is_int "$DASHBOARD_PORT" || die "--dashboard-port must be a port number, got '$DASHBOARD_PORT'"
[ "$((WORKERS * CPUS_PER_NODE + HEAD_CPUS))" -ge 1 ] || die "the cluster would have no CPU: give --workers >= 1 or --head-cpus >= 1"

RAY_BIN=$(find_ray "$REPO")
RAY_BIN_DIR=$(cd "$(dirname "$(command -v "$RAY_BIN")")" && pwd)
PY="$RAY_BIN_DIR/python"
[ -x "$PY" ] || PY=$(command -v python3) || die "no python next to $RAY_BIN and no python3 on PATH"
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
STATE="$STATE_DIR/state.env"

print_access() {  # the lines a user needs, from the loaded state
  cat <<EOF
Ray cluster '$CLUSTER_ID' is up: head + $NUM_WORKERS worker node(s) on this machine
  dashboard / job server : $DASHBOARD_URL   (loopback only; from elsewhere use an SSH tunnel)
  GCS address            : $GCS_ADDRESS
  auth token             : $TOKEN_FILE
  logs                   : $TEMP_ROOT/<node>/session_latest/logs, start logs in $STATE_DIR
Use it from a shell:
  export RAY_ADDRESS=$GCS_ADDRESS
  export RAY_API_SERVER_ADDRESS=$DASHBOARD_URL
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(printf %q "$TOKEN_FILE")
  # (or: source $(printf %q "$STATE_DIR/env.sh"))
  ray job submit --working-dir . -- ptycho-dist train --address auto --data /abs/path/scan.npz ...
Stop it with: $HERE/down.sh$( [ "$STATE_DIR" = "$HERE/.state" ] || printf ' --state-dir %q' "$STATE_DIR")
EOF
}

# ---------------------------------------------------------------- already running?
if [ -f "$STATE" ]; then
  # shellcheck disable=SC1090
  source "$STATE"
  if is_node_leader "$HEAD_PID" "$CLUSTER_ID"; then
    alive=0
    for pid in $WORKER_PIDS; do if is_node_leader "$pid" "$CLUSTER_ID"; then alive=$((alive + 1)); fi; done
    if [ "$alive" -ne "$NUM_WORKERS" ]; then
      note "warning: only $alive of $NUM_WORKERS worker nodes of '$CLUSTER_ID' are alive; run down.sh and up.sh again"
    fi
    if [ "$NUM_WORKERS" != "$WORKERS" ]; then
      note "note: already running with $NUM_WORKERS worker node(s), not $WORKERS; run down.sh first to change it"
    fi
    note "already running (state: $STATE)"
    print_access
    exit 0
  fi
  note "found stale state of cluster '$CLUSTER_ID' (head not running); cleaning it up first"
  "$HERE/down.sh" --state-dir "$STATE_DIR" >&2
  mkdir -p "$STATE_DIR"
fi

# ---------------------------------------------------------------- ports
port_free() {  # can a server bind 127.0.0.1:$1? (SO_REUSEADDR, like Ray's servers: TIME_WAIT is fine)
  "$PY" - "$1" 2>/dev/null <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
EOF
}
free_ports() {  # $1 distinct free ports, space-separated
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
pick_port() {  # $1 = requested ("" = default $2 if free, else any free port); $3 = flag name
  if [ -n "$1" ]; then
    port_free "$1" || die "$3 $1 is in use on 127.0.0.1 (another Ray?); pick another port"
    echo "$1"
  elif port_free "$2"; then
    echo "$2"
  else
    note "note: port $2 is taken (another Ray on this machine?); using a free port for $3"
    free_ports 1
  fi
}
GCS_PORT=$(pick_port "$PORT" 6379 --port)
DASHBOARD_PORT=$(pick_port "$DASHBOARD_PORT" 8265 --dashboard-port)
# client server + one dashboard-agent port per node: their defaults (10001, 52365) would collide
# between our nodes and with other Ray instances; the other ports Ray picks at random already.
read -r -a EXTRA_PORTS <<<"$(free_ports $((WORKERS + 2)))"
CLIENT_PORT=${EXTRA_PORTS[0]}

# ---------------------------------------------------------------- environment of every node
CLUSTER_ID=$("$PY" -c 'import secrets; print("pdc" + secrets.token_hex(8))')
TOKEN_FILE="$STATE_DIR/auth_token"
( umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$TOKEN_FILE" )
# Ray's sockets live under the temp dir and a unix socket path must stay < 108 bytes: keep it short.
TEMP_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/pdc.XXXXXX")
rm -f "$STATE_DIR"/node-*.log

node_env=(
  env -u RAY_API_SERVER_ADDRESS -u RAY_AUTH_TOKEN
  "PTYCHO_DIST_CLUSTER_ID=$CLUSTER_ID"
  # Every Ray process of this cluster finds this cluster, not another one on the machine: without
  # it, code that looks the cluster up with no address (Ray Train's PlacementGroupCleaner uses the
  # State API that way) fails with "Found multiple active Ray instances", or reads the cluster
  # recorded in /tmp/ray/ray_current_cluster, which belongs to whoever ran `ray start` last.
  "RAY_ADDRESS=127.0.0.1:$GCS_PORT"
  "RAY_AUTH_MODE=token" "RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
  "PATH=$RAY_BIN_DIR:$PATH"
  "RAY_USAGE_STATS_ENABLED=0"
  # On SIGTERM (down.sh) a node would otherwise drain for up to 30 s while a job runs; a local
  # cluster has nothing to drain (that is for Serve traffic), so stop at once like `ray stop`.
  "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0"
)
# Exposure (measured with Ray 2.60 on Linux): the dashboard + job server bind to 127.0.0.1 as asked
# (--dashboard-host). `ray start --node-ip-address=127.0.0.1` does NOT give a loopback-only node:
# ray start rewrites localhost/127.0.0.1 to the machine's primary IP (resolve_ip_for_localhost), and
# the GCS and raylet gRPC servers listen on all interfaces whatever the node IP. Those ports are
# guarded by token authentication (RAY_AUTH_MODE=token, this cluster's own token); on a machine
# reachable by others, firewall them or use a private network namespace/VM.
common_flags=(--block --disable-usage-stats
              --object-store-memory=$((OBJECT_STORE_MB * 1024 * 1024)))

write_state() {
  cat >"$STATE" <<EOF
# written by cluster/local/up.sh; read by down.sh. HEAD_PID / WORKER_PIDS: the 'setsid ray start
# --block' process of each node, leader of the session that holds that node's Ray processes; they
# all also carry PTYCHO_DIST_CLUSTER_ID=$CLUSTER_ID in their environment (see common.sh).
EOF
  printf '%s=%q\n' CLUSTER_ID "$CLUSTER_ID" HEAD_PID "${HEAD_PID:-}" WORKER_PIDS "${WORKER_PIDS:-}" \
    NUM_WORKERS "$WORKERS" GCS_ADDRESS "127.0.0.1:$GCS_PORT" DASHBOARD_URL "http://127.0.0.1:$DASHBOARD_PORT" \
    TEMP_ROOT "$TEMP_ROOT" TOKEN_FILE "$TOKEN_FILE" STATE_DIR "$STATE_DIR" RAY_BIN "$RAY_BIN" >>"$STATE"
  cat >"$STATE_DIR/env.sh" <<EOF
# source this file to use the local cluster '$CLUSTER_ID' from a shell
export RAY_ADDRESS=127.0.0.1:$GCS_PORT
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=token
EOF
  printf 'export RAY_AUTH_TOKEN_PATH=%q\n' "$TOKEN_FILE" >>"$STATE_DIR/env.sh"
}

fail_start() {  # $1 = message; show the start log, stop whatever started, exit 1
  note "error: $1"
  [ -n "${2:-}" ] && [ -f "$2" ] && { note "---- last lines of $2"; tail -n 25 "$2" >&2; }
  note "stopping what was started ..."
  "$HERE/down.sh" --state-dir "$STATE_DIR" >&2 || true
  exit 1
}

NODE_PIDS=() NODE_LOGS=()
check_nodes_alive() {  # every 'ray start --block' we launched must still run
  local k
  for k in "${!NODE_PIDS[@]}"; do
    kill -0 "${NODE_PIDS[$k]}" 2>/dev/null || fail_start "'ray start' of node $k exited early" "${NODE_LOGS[$k]}"
  done
}

wait_for() {  # $1 = seconds, rest = test command
  local limit=$1 deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    check_nodes_alive
    [ "$SECONDS" -ge "$deadline" ] && fail_start "timed out after $limit s waiting for: $*" "${NODE_LOGS[0]}"
    sleep 1
  done
}

http_up() {  # the dashboard answers an authenticated request (the token is read from the file)
  "$PY" - "$1" "$TOKEN_FILE" >/dev/null 2>&1 <<'EOF'
import sys, urllib.request
token = open(sys.argv[2]).read().strip()
urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers={"Authorization": f"Bearer {token}"}), timeout=3)
EOF
}

alive_nodes() {  # number of alive nodes, via the State API of the dashboard (authenticated)
  "${node_env[@]}" "$PY" - "http://127.0.0.1:$DASHBOARD_PORT" <<'EOF' 2>/dev/null
import sys
from ray.util.state import list_nodes
print(len(list_nodes(address=sys.argv[1], filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)))
EOF
}

# ---------------------------------------------------------------- head
write_state
trap 'fail_start "interrupted"' INT TERM  # never leave half a cluster behind
note "starting head node (GCS 127.0.0.1:$GCS_PORT, dashboard 127.0.0.1:$DASHBOARD_PORT, $HEAD_CPUS CPU) ..."
HEAD_LOG="$STATE_DIR/node-0-head.log"
"${node_env[@]}" setsid "$RAY_BIN" start --head "${common_flags[@]}" \
  --port="$GCS_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
  --ray-client-server-port="$CLIENT_PORT" --dashboard-agent-listen-port="${EXTRA_PORTS[1]}" \
  --num-cpus="$HEAD_CPUS" --num-gpus=0 --resources='{"local_node_0": 1}' \
  --temp-dir="$TEMP_ROOT/node-0" </dev/null >"$HEAD_LOG" 2>&1 &
HEAD_PID=$!
NODE_PIDS+=("$HEAD_PID") NODE_LOGS+=("$HEAD_LOG")
write_state
wait_for 120 http_up "http://127.0.0.1:$DASHBOARD_PORT/api/version"

# ---------------------------------------------------------------- workers
WORKER_PIDS=""
for i in $(seq 1 "$WORKERS"); do
  note "starting worker node $i ($CPUS_PER_NODE CPU) ..."
  log="$STATE_DIR/node-$i.log"
  "${node_env[@]}" setsid "$RAY_BIN" start "${common_flags[@]}" --address="127.0.0.1:$GCS_PORT" \
    --dashboard-agent-listen-port="${EXTRA_PORTS[$((i + 1))]}" \
    --num-cpus="$CPUS_PER_NODE" --num-gpus=0 --resources="{\"local_node_$i\": 1}" \
    --temp-dir="$TEMP_ROOT/node-$i" </dev/null >"$log" 2>&1 &
  WORKER_PIDS="$WORKER_PIDS${WORKER_PIDS:+ }$!"
  NODE_PIDS+=("$!") NODE_LOGS+=("$log")
  write_state
done

note "waiting for $((WORKERS + 1)) nodes to register ..."
nodes_registered() { [ "$(alive_nodes)" = "$((WORKERS + 1))" ]; }
wait_for 180 nodes_registered

# shellcheck disable=SC1090
source "$STATE"
print_access
