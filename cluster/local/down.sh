#!/usr/bin/env bash
# Stop the local Ray cluster that cluster/local/up.sh started, and only that one.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: cluster/local/down.sh [--state-dir DIR] [--keep-logs] [--grace S]

Stop exactly the processes of the local cluster recorded in DIR/state.env by up.sh: processes
carrying that cluster's PTYCHO_DIST_CLUSTER_ID (incl. job drivers, which start a session of their
own), the sessions led by each node's 'setsid ray start --block' while that leader still carries the
id (GCS, raylets, dashboard, agents, Ray workers; a recycled PID of another session is left alone), and their descendants (see common.sh). Other Ray instances on this machine are left
alone: this script never runs a blanket `ray stop`. Does nothing, successfully, when no cluster
is recorded.

Order: SIGTERM to each node's 'ray start --block' (workers first, then the head; each drains and
stops its own node), wait up to S seconds; then SIGTERM to anything of the cluster still alive,
5 s; then SIGKILL. Exits 1 if a process survives that.

options:
  --state-dir DIR  state directory given to up.sh (default: cluster/local/.state)
  --keep-logs      keep the Ray temp dirs (logs of every node) and start logs (default: delete)
  --grace S        seconds to wait for a graceful stop (default: 20)
  -h, --help       show this help
EOF
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

STATE_DIR="$HERE/.state" KEEP_LOGS=0 GRACE=20
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --keep-logs) KEEP_LOGS=1; shift ;;
    --state-dir|--grace)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      if [ "$1" = --state-dir ]; then STATE_DIR=$2; else GRACE=$2; fi
      shift 2 ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $GRACE =~ ^[0-9]+$ ]] || die "--grace must be a whole number of seconds, got '$GRACE'"

STATE="$STATE_DIR/state.env"
if [ ! -f "$STATE" ]; then
  echo "no local cluster recorded in $STATE; nothing to stop"
  exit 0
fi
# shellcheck disable=SC1090
source "$STATE"
[ -n "${CLUSTER_ID:-}" ] || die "$STATE has no CLUSTER_ID; remove it by hand after checking 'ps'"

read -r -a SESSIONS <<<"${WORKER_PIDS:-} ${HEAD_PID:-}"  # workers first, then the head
members() { cluster_pids "$CLUSTER_ID" "${SESSIONS[@]}" | tr '\n' ' '; }
pids=$(members)
if [ -z "$pids" ]; then
  echo "cluster '$CLUSTER_ID': no process left"
else
  echo "stopping cluster '$CLUSTER_ID' ($(echo "$pids" | wc -w) processes) ..."
  leaders=0
  for pid in "${SESSIONS[@]}"; do  # each 'ray start --block' stops its own node
    if is_node_leader "$pid" "$CLUSTER_ID"; then kill -TERM "$pid" 2>/dev/null || true; leaders=$((leaders + 1)); fi
  done
  if [ "$leaders" = 0 ]; then  # the 'ray start' processes died already: stop what they left
    echo "no node's 'ray start' is alive; sending SIGTERM to the $(echo "$pids" | wc -w) processes left"
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    GRACE=5  # orphaned agents may ignore SIGTERM; do not wait long for them
  fi
  if ! wait_cluster_gone "$GRACE" "$CLUSTER_ID" "${SESSIONS[@]}"; then
    left=$(members)
    echo "still running after ${GRACE} s: $left; sending SIGTERM"
    for pid in $left; do kill -TERM "$pid" 2>/dev/null || true; done
    if ! wait_cluster_gone 5 "$CLUSTER_ID" "${SESSIONS[@]}"; then
      left=$(members)
      echo "still running: $left; sending SIGKILL"
      for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
      if ! wait_cluster_gone 5 "$CLUSTER_ID" "${SESSIONS[@]}"; then
        echo "error: processes of cluster '$CLUSTER_ID' survived SIGKILL: $(members)" >&2
        exit 1
      fi
    fi
  fi
  echo "cluster '$CLUSTER_ID' stopped"
fi

if [ "$KEEP_LOGS" = 1 ]; then
  echo "kept logs: ${TEMP_ROOT:-?} and $STATE_DIR/node-*.log"
  rm -f "$STATE" "$STATE_DIR/env.sh" "$STATE_DIR/auth_token"
else
  case "${TEMP_ROOT:-}" in  # only ever delete a temp dir that up.sh created
    */pdc.??????) rm -rf "$TEMP_ROOT" ;;
  esac
  rm -f "$STATE" "$STATE_DIR/env.sh" "$STATE_DIR/auth_token" "$STATE_DIR"/node-*.log
  rmdir "$STATE_DIR" 2>/dev/null || true
fi
